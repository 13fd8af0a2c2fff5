"""The library's warning class."""

from __future__ import annotations

__all__ = ["FilterStatsWarning"]


class FilterStatsWarning(UserWarning):
    """Degenerate input or a fallback the user should know about.

    Raised as a warning (never an error) for: an all-zero layer, a layer with a
    single output filter, too few non-sparse filters for a diversity value, NaN/inf
    weights under ``nan_policy="propagate"`` or ``"omit"`` (one warning per call
    naming the layers), a depth
    computed from module registration order because the model did not trace, and a
    model with no selected convolution. Filter them with ``warnings.filterwarnings(
    "ignore", category=filterstats.FilterStatsWarning)``.
    """
