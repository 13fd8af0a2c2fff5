"""Statistics of a comparison: paired tests, effect sizes and bootstrap intervals.

Plain functions of arrays; the result objects of
[`filterstats.compare.results`][filterstats.compare.results] call them. Nothing here
knows about models or reports.
"""

from __future__ import annotations

import math

import numpy as np

from filterstats._stats import bootstrap_mean_ci, paired_wilcoxon

__all__ = ["check_boot", "mean_or_nan", "paired_statistics"]


def mean_or_nan(values: np.ndarray) -> float:
    """Mean of ``values``; NaN for none."""
    return float(values.mean()) if values.size else math.nan


def paired_statistics(
    a: np.ndarray,
    b: np.ndarray,
    clusters: np.ndarray | None,
    *,
    n_boot: int,
    confidence: float,
    generator: np.random.Generator,
) -> dict[str, float]:
    """Means of both sides, the mean/median of ``a - b``, its bootstrap CI, Wilcoxon."""
    d = a - b
    test = paired_wilcoxon(d)
    low, high = bootstrap_mean_ci(
        d, clusters, n_boot=n_boot, confidence=confidence, generator=generator
    )
    return {
        "mean_a": mean_or_nan(a),
        "mean_b": mean_or_nan(b),
        "mean_diff": mean_or_nan(d),
        "median_diff": float(np.median(d)) if d.size else math.nan,
        "ci_low": low,
        "ci_high": high,
        "wilcoxon_p": test.pvalue,
        "rank_biserial": test.rank_biserial,
    }


def check_boot(n_boot: int, confidence: float) -> None:
    """Raise ``ValueError`` for a bad ``n_boot`` or ``confidence``."""
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"`n_boot` must be a positive integer, got {n_boot!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must lie in (0, 1), e.g. 0.95, got {confidence!r}.")
