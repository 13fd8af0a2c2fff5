"""The one table of per-layer metrics: what each is, how it aggregates, which way it points.

Every part of filterstats that names a metric reads it from here: ``analyze`` (which
columns a report has), the result tables and their exports, depth-bin aggregation,
``compare`` (default metrics, expected direction), the plots (axis titles) and the
HTML report. Adding a metric means: its maths in ``kernels``, its computation in
``metrics.measure``, one row here, and tests; nothing else.

Expected directions are those Gavrikov & Keuper (CVPR-W 2022) report for
adversarially trained models against normally trained twins: more diverse, less
sparse, more orthogonal filters; for the frequency profile, that of Lukasik et al.
(TMLR 2023): adversarial training moves kernel energy away from high frequencies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "METRICS",
    "Metric",
    "aggregated_metrics",
    "default_metrics",
    "get_metric",
    "in_table_order",
    "names",
]


@dataclass(frozen=True)
class Metric:
    """One per-layer metric.

    Attributes:
        name: Column name in every table (``"diversity"``).
        title: Human title, for axes and headers (``"variance entropy"``).
        description: One sentence: what it measures.
        low: Smallest possible value (``None``: unbounded).
        high: Largest possible value (``None``: unbounded or size-dependent).
        weight: Layer column that weights the metric when layers are pooled into a
            depth bin or a model value (``"n_filters"``, ``"n_nonsparse"``,
            ``"out_channels"``); ``None``: the metric is not pooled.
        weight_if_sparse_kept: Weight instead of ``weight`` when the report's
            definition keeps sparse kernels in the metric (``drop_sparse=False``).
        paper_nan_weight: The paper's code counted a layer with a NaN value in the
            pooled mean's denominator (its bug 4; ``nan_in_denominator=True``
            reproduces it for these metrics).
        direction: Expected sign of robust minus normal in the literature: ``+1``
            higher, ``-1`` lower, ``0`` none stated.
        default: Shown in printed tables and compared by default.
        digits: Decimals in printed tables.
        needs: ``""``: computed by every ``analyze``; ``"spectra"``: only by
            ``analyze(..., spectra=True)`` (from
            [`conv_spectra`][filterstats.spectra.conv_spectra]).
    """

    name: str
    title: str
    description: str
    low: float | None = None
    high: float | None = None
    weight: str | None = "n_filters"
    weight_if_sparse_kept: str | None = None
    paper_nan_weight: bool = False
    direction: int = 0
    default: bool = False
    digits: int = 4
    needs: str = ""

    def weight_column(self, *, drop_sparse: bool = True) -> str | None:
        """The layer column that weights this metric when layers are pooled.

        Args:
            drop_sparse: Whether the report's definition left sparse kernels out.

        Returns:
            A column name, or ``None`` when the metric is not pooled.
        """
        if not drop_sparse and self.weight_if_sparse_kept is not None:
            return self.weight_if_sparse_kept
        return self.weight


#: Every per-layer metric, in column order.
METRICS: tuple[Metric, ...] = (
    Metric(
        "sparsity",
        "sparsity",
        "Share of kernels whose largest |value| is at most eps times the layer's largest.",
        low=0.0,
        high=1.0,
        weight="n_filters",
        direction=-1,
        default=True,
    ),
    Metric(
        "diversity",
        "variance entropy",
        "Variance entropy (base 10) of the layer's kernels under the report's definition.",
        low=0.0,
        weight="n_nonsparse",
        weight_if_sparse_kept="n_filters",
        paper_nan_weight=True,
        direction=+1,
        default=True,
    ),
    Metric(
        "diversity_clean",
        "variance entropy (non-sparse)",
        "Variance entropy of the non-sparse kernels only.",
        low=0.0,
        weight="n_nonsparse",
        paper_nan_weight=True,
        direction=+1,
    ),
    Metric(
        "entropy_raw",
        "variance entropy (raw)",
        "Variance entropy of the raw kernels, all kept, not normalised (CNN Filter DB).",
        low=0.0,
        weight="n_filters",
        paper_nan_weight=True,
        direction=+1,
    ),
    Metric(
        "orthogonality",
        "orthogonality",
        "1 minus the mean |cosine| between distinct output filters.",
        low=0.0,
        high=1.0,
        weight="out_channels",
        direction=+1,
        default=True,
    ),
    Metric(
        "group_orthogonality",
        "orthogonality within groups",
        "Orthogonality among the output filters that share inputs (one group of a grouped "
        "or depthwise convolution), pooled over groups; equal to orthogonality for dense "
        "layers.",
        low=0.0,
        high=1.0,
        weight="out_channels",
        direction=+1,
    ),
    Metric(
        "freq_dc",
        "DC energy share",
        "Share of the kernels' energy in the DC term of their 2-D DCT-II.",
        low=0.0,
        high=1.0,
        weight="n_nonsparse",
        weight_if_sparse_kept="n_filters",
    ),
    Metric(
        "freq_low",
        "low-frequency energy share",
        "Share of the kernels' energy at DCT-II frequencies below half Nyquist on every "
        "axis, DC excluded ((0,1), (1,0), (1,1) for 3x3).",
        low=0.0,
        high=1.0,
        weight="n_nonsparse",
        weight_if_sparse_kept="n_filters",
    ),
    Metric(
        "freq_high",
        "high-frequency energy share",
        "Share of the kernels' energy at the other DCT-II frequencies.",
        low=0.0,
        high=1.0,
        weight="n_nonsparse",
        weight_if_sparse_kept="n_filters",
        direction=-1,
    ),
    Metric(
        "spectral_norm",
        "spectral norm",
        "Operator 2-norm of the convolution at its input size (bias excluded): exact or a "
        "certified upper bound (the spectra's method column says which).",
        low=0.0,
        weight="out_channels",
        needs="spectra",
    ),
    Metric(
        "stable_rank",
        "operator stable rank",
        "||A||_F^2 / ||A||_2^2 of the convolution operator (a lower bound when the norm "
        "is a bound).",
        low=1.0,
        weight="out_channels",
        needs="spectra",
        digits=2,
    ),
    Metric(
        "condition_number",
        "condition number",
        "sigma_max / sigma_min of the operator; NaN unless all singular values were "
        "computed for an exact method.",
        low=1.0,
        weight=None,
        needs="spectra",
        digits=2,
    ),
)

_BY_NAME = {metric.name: metric for metric in METRICS}


def names() -> tuple[str, ...]:
    """Names of every metric.

    Returns:
        The names, in column order.
    """
    return tuple(_BY_NAME)


def in_table_order(held: Iterable[str]) -> tuple[str, ...]:
    """Metric names as tables show them: the table's own in its order, then any others.

    Args:
        held: Names a result holds, in the order first seen (duplicates allowed).

    Returns:
        The names of the metric table that are held, in table order, then the other
        held names (drift columns, say) in the order first seen.
    """
    seen = dict.fromkeys(held)
    known = [name for name in _BY_NAME if name in seen]
    return (*known, *(name for name in seen if name not in _BY_NAME))


def default_metrics() -> tuple[str, ...]:
    """Metrics shown in printed tables and compared by default.

    Returns:
        The paper's three: ``("sparsity", "diversity", "orthogonality")``.
    """
    return tuple(metric.name for metric in METRICS if metric.default)


def aggregated_metrics() -> tuple[str, ...]:
    """Metrics that pool over layers (depth bins, model values).

    Returns:
        Names of the metrics with a pooling ``weight``, in column order.
    """
    return tuple(metric.name for metric in METRICS if metric.weight is not None)


def get_metric(name: str) -> Metric:
    """The table row of one metric.

    Args:
        name: A metric name, e.g. ``"diversity"``.

    Returns:
        Its [`Metric`][filterstats.metric_table.Metric].

    Raises:
        KeyError: Unknown name; the message lists the known ones.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; metrics: {', '.join(_BY_NAME)}") from None
