"""Small statistics helpers shared by the comparison: tests, effect sizes, bootstrap.

All return NaN (never raise) for samples too small to say anything.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "PairedTest",
    "bootstrap_mean_ci",
    "holm",
    "mann_whitney",
    "paired_wilcoxon",
]


def _scipy_stats() -> Any:
    # Imported on first use: scipy.stats takes about a second to import, and
    # `import filterstats` must stay cheap.
    from scipy import stats

    return stats


def _asymptotic() -> str:
    import scipy

    # scipy renamed the normal approximation from "approx" to "asymptotic" in 1.13.
    major_minor = tuple(int(part) for part in scipy.__version__.split(".")[:2])
    return "asymptotic" if major_minor >= (1, 13) else "approx"


@dataclass(frozen=True)
class PairedTest:
    """Result of a paired Wilcoxon signed-rank test.

    Attributes:
        statistic: The smaller of the signed-rank sums (scipy's two-sided statistic).
        pvalue: Two-sided p-value; 1 when every difference is zero; NaN for no data.
        rank_biserial: Matched-pairs rank-biserial correlation
            ``(R+ - R-) / (R+ + R-)`` in [-1, 1]; 0 when every difference is zero.
    """

    statistic: float
    pvalue: float
    rank_biserial: float


def paired_wilcoxon(differences: np.ndarray) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of differences against 0.

    Zero differences are dropped (Wilcoxon's convention); non-finite ones too. The
    p-value is exact for up to 50 differences without ties, else from the normal
    approximation with tie correction.

    Args:
        differences: ``(n,)`` paired differences ``a - b``.

    Returns:
        The [`PairedTest`][filterstats._stats.PairedTest].
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return PairedTest(math.nan, math.nan, math.nan)
    nonzero = d[d != 0]
    if nonzero.size == 0:
        return PairedTest(0.0, 1.0, 0.0)
    stats = _scipy_stats()
    ranks = stats.rankdata(np.abs(nonzero))
    plus = float(ranks[nonzero > 0].sum())
    minus = float(ranks[nonzero < 0].sum())
    ties = np.unique(np.abs(nonzero)).size < nonzero.size
    # Exact null distribution without ties (n <= 50); with ties, the normal approximation
    # with tie correction (scipy's default would run a slow permutation test instead).
    method = "exact" if not ties and nonzero.size <= 50 else _asymptotic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on tiny samples
        result = stats.wilcoxon(
            nonzero, zero_method="wilcox", alternative="two-sided", method=method
        )
    return PairedTest(
        float(result.statistic), float(result.pvalue), (plus - minus) / (plus + minus)
    )


def mann_whitney(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sided Mann-Whitney U test and Cliff's delta between two samples.

    Args:
        a: ``(n,)`` values of the first group.
        b: ``(m,)`` values of the second group.

    Returns:
        ``(pvalue, cliffs_delta)``; delta ``= P(a > b) - P(a < b)`` in [-1, 1].
        NaN when a group has no finite value.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    x = x[np.isfinite(x)]
    y = y[np.isfinite(y)]
    if x.size == 0 or y.size == 0:
        return math.nan, math.nan
    if np.array_equal(np.sort(x), np.sort(y)):
        return 1.0, 0.0
    result = _scipy_stats().mannwhitneyu(x, y, alternative="two-sided")
    delta = 2.0 * float(result.statistic) / (x.size * y.size) - 1.0
    return float(result.pvalue), delta


def bootstrap_mean_ci(
    differences: np.ndarray,
    clusters: np.ndarray | None,
    *,
    n_boot: int,
    confidence: float,
    generator: np.random.Generator,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a mean difference.

    With ``clusters`` (e.g. the pair each matched layer belongs to) whole clusters are
    resampled, so layers of one model pair are not treated as independent.

    Args:
        differences: ``(n,)`` differences.
        clusters: ``(n,)`` integer cluster ids, or ``None`` to resample single values.
        n_boot: Bootstrap resamples.
        confidence: Coverage, e.g. 0.95.
        generator: Source of randomness (seeded by the caller).

    Returns:
        ``(low, high)``; NaN when fewer than two values (or clusters) exist.
    """
    d = np.asarray(differences, dtype=np.float64)
    keep = np.isfinite(d)
    d = d[keep]
    alpha = (1.0 - confidence) / 2.0
    if clusters is None:
        if d.size < 2:
            return math.nan, math.nan
        index = generator.integers(0, d.size, size=(n_boot, d.size))
        means = d[index].mean(axis=1)
    else:
        ids = np.asarray(clusters)[keep]
        unique, inverse = np.unique(ids, return_inverse=True)
        if unique.size < 2:
            return math.nan, math.nan
        sums = np.bincount(inverse, weights=d, minlength=unique.size)
        counts = np.bincount(inverse, minlength=unique.size).astype(np.float64)
        index = generator.integers(0, unique.size, size=(n_boot, unique.size))
        means = sums[index].sum(axis=1) / counts[index].sum(axis=1)
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error rate control).

    Holm's method controls the probability of any false rejection among the ``m``
    tests under any dependence between them, which is why it is used for the per-bin
    and per-metric tests of a comparison (bins of one model are not independent).
    With the sorted p-values ``p_(1) <= ... <= p_(m)`` the adjusted value is
    ``max_{j <= i} min(1, (m - j + 1) * p_(j))``; reject at level ``alpha`` where the
    adjusted value is ``<= alpha``.

    NaN entries (tests that could not be computed) are kept as NaN and do not count
    towards ``m``.

    Args:
        p_values: ``(m,)`` unadjusted p-values in [0, 1] (NaN allowed).

    Returns:
        ``(m,)`` float64 adjusted p-values in the input order, each ``>=`` its input
        and clipped to 1.

    Raises:
        ValueError: If `p_values` is not one-dimensional or holds a finite value
            outside [0, 1].
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"`p_values` must be one-dimensional, got shape {p.shape}")
    out = np.full(p.shape, math.nan)
    finite = ~np.isnan(p)
    values = p[finite]
    if np.any((values < 0.0) | (values > 1.0)):
        raise ValueError("`p_values` must lie in [0, 1] (or be NaN)")
    m = values.size
    if m == 0:
        return out
    order = np.argsort(values, kind="stable")
    scaled = (m - np.arange(m)) * values[order]
    adjusted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    result = np.empty(m)
    result[order] = adjusted
    out[finite] = result
    return out
