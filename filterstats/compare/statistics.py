"""Statistics of a comparison: inference over model pairs (or models), descriptive layers.

Plain functions of arrays; the result objects of
[`filterstats.compare.results`][filterstats.compare.results] call them. Nothing here
knows about models or reports.

The unit of inference is the model pair (paired design: each model in one pair) or the
model (unpaired: a model shared by several pairs, or everything against one model).
Layers of one model are not independent samples: statistics over pooled layers are
returned too, named ``unit_*``/``wilcoxon_p``/``rank_biserial``, and are descriptive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from filterstats._stats import bootstrap_mean_ci, mann_whitney, paired_wilcoxon

__all__ = [
    "Design",
    "check_boot",
    "hierarchical_bootstrap_means",
    "infer",
    "mean_or_nan",
    "nan_clean",
    "sign_text",
]

Design = Literal["paired", "unpaired"]

#: Elements (resamples x top units x inner units) drawn per chunk of the bootstrap.
_CHUNK_ELEMENTS = 2_000_000


def mean_or_nan(values: np.ndarray) -> float:
    """Mean of ``values``; NaN for none.

    Args:
        values: ``(n,)`` values.

    Returns:
        The mean, or NaN when ``n == 0``.
    """
    return float(values.mean()) if values.size else math.nan


def nan_clean(value: Any) -> Any:
    """A float with every NaN as the one ``math.nan`` object (rows then compare equal).

    Args:
        value: Any value; numpy scalars become Python numbers.

    Returns:
        The value, NaN as ``math.nan``.
    """
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return math.nan if math.isnan(number) else number
    if isinstance(value, np.integer):
        return int(value)
    return value


def check_boot(n_boot: int, confidence: float) -> None:
    """Raise ``ValueError`` for a bad ``n_boot`` or ``confidence``.

    Args:
        n_boot: Bootstrap resamples (a positive integer).
        confidence: Interval coverage in (0, 1).
    """
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"`n_boot` must be a positive integer, got {n_boot!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must lie in (0, 1), e.g. 0.95, got {confidence!r}.")


def hierarchical_bootstrap_means(
    groups: Sequence[np.ndarray], *, n_boot: int, generator: np.random.Generator
) -> np.ndarray:
    """Two-level bootstrap of a mean of group means: resample groups, then values within.

    One resample draws ``k`` groups with replacement out of the ``k`` groups (model
    pairs, or models), then, within each drawn group of ``n_i`` values (its layers or
    bins), ``n_i`` values with replacement; its statistic is the mean over the drawn
    groups of their resampled means (each group weighted equally, as the point
    estimate ``mean(group means)``).

    Random draws, in this order: ``generator.integers(0, k, size=(n_boot, k))`` (the
    groups), then per chunk of resamples ``generator.random((chunk, k, max n_i))``
    (a value's index within group ``i`` is ``floor(u * n_i)``).

    Args:
        groups: ``k`` arrays, each ``(n_i,)`` finite values, ``n_i >= 1``.
        n_boot: Resamples.
        generator: Source of randomness (seeded by the caller).

    Returns:
        ``(n_boot,)`` resampled statistics.
    """
    k = len(groups)
    sizes = np.array([g.size for g in groups], dtype=np.int64)
    width = int(sizes.max())
    table = np.zeros((k, width), dtype=np.float64)
    for i, g in enumerate(groups):
        table[i, : g.size] = g
    top = generator.integers(0, k, size=(n_boot, k))
    out = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, _CHUNK_ELEMENTS // (k * width))
    positions = np.arange(width)
    for start in range(0, n_boot, chunk):
        chosen = top[start : start + chunk]  # (c, k)
        n = sizes[chosen]  # (c, k)
        u = generator.random((chosen.shape[0], k, width))
        inner = np.floor(u * n[..., None]).astype(np.int64)
        values = table[chosen[..., None], inner]
        values = np.where(positions < n[..., None], values, 0.0)
        out[start : start + chunk] = (values.sum(axis=-1) / n).mean(axis=-1)
    return out


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(low), float(high)


def sign_text(positive: int, negative: int, total: int, labels: tuple[str, str], noun: str) -> str:
    """The sign count as researchers report it: ``"robust > normal in 5 of 5 pairs"``.

    Args:
        positive: Units with ``a > b``.
        negative: Units with ``a < b``.
        total: Units (the rest are equal).
        labels: Group labels ``(a, b)``.
        noun: What a unit is (``"pairs"``, ``"model pairings"``).

    Returns:
        The text; empty for no unit.
    """
    a, b = labels
    if total == 0:
        return ""
    equal = total - positive - negative
    if equal == total:
        return f"{a} = {b} in {total} of {total} {noun}"
    if positive >= negative:
        text = f"{a} > {b} in {positive} of {total} {noun}"
        if negative:
            text += f" ({b} > {a} in {negative})"
    else:
        text = f"{b} > {a} in {negative} of {total} {noun}"
        if positive:
            text += f" ({a} > {b} in {positive})"
    if equal:
        text += f" ({equal} equal)"
    return text


def infer(
    pair: np.ndarray,
    model_a: Sequence[str],
    model_b: Sequence[str],
    unit: Sequence[str],
    a: np.ndarray,
    b: np.ndarray,
    *,
    design: Design,
    labels: tuple[str, str],
    n_boot: int,
    confidence: float,
    generator: np.random.Generator,
) -> dict[str, Any]:
    """Headline inference over pairs (or models) and descriptive statistics over units.

    Each entry is one matched unit (layer or depth bin) of one pair: its pair index,
    the two models, the unit's name and the values ``a``, ``b``. Entries with a
    non-finite value are left out.

    Paired design (each model in one pair): a pair's difference is the mean of its
    units' differences ``a - b``; ``mean_diff`` is the mean over pairs; the interval is
    the hierarchical bootstrap (pairs, then units within pairs); ``p_value`` is the
    two-sided Wilcoxon signed-rank test of the pair differences (exact for up to 50
    pairs without ties; with k pairs the smallest attainable p is ``2 / 2**k``); the
    sign count is over pairs. No interval or test with fewer than two pairs.

    Unpaired design: a model's value is the mean of its units (each unit once, however
    many pairs share the model); ``mean_diff`` = mean over the models of ``a`` minus
    mean over the models of ``b``; the interval bootstraps each group hierarchically
    (models, then units); ``p_value`` is the two-sided Mann-Whitney U test of the model
    values; the sign count is over all ``(a model, b model)`` pairings. No interval or
    test unless both groups hold two models or more.

    Args:
        pair: ``(n,)`` pair index per entry.
        model_a: ``n`` labels of the ``a`` model per entry.
        model_b: ``n`` labels of the ``b`` model per entry.
        unit: ``n`` unit names (layer or bin).
        a: ``(n,)`` values of ``a``.
        b: ``(n,)`` values of ``b``.
        design: ``"paired"`` or ``"unpaired"``.
        labels: Group labels, for the sign text.
        n_boot: Bootstrap resamples.
        confidence: Interval coverage.
        generator: Source of randomness.

    Returns:
        A dict of the headline fields (``n_pairs``, ``n_units``, ``mean_a``,
        ``mean_b``, ``mean_diff``, ``ci_low``, ``ci_high``, ``p_value``,
        ``n_positive``, ``n_negative``, ``n_compared``, ``signs``) and the descriptive
        ones over pooled units (``unit_mean_diff``, ``median_diff``, ``unit_ci_low``,
        ``unit_ci_high``, ``wilcoxon_p``, ``rank_biserial``), plus the model-level
        ``pair_wilcoxon_p``, ``mannwhitney_p`` and ``cliffs_delta``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    pair = np.asarray(pair, dtype=np.int64)[keep]
    names_a = [m for m, k in zip(model_a, keep) if k]
    names_b = [m for m, k in zip(model_b, keep) if k]
    units = [u for u, k in zip(unit, keep) if k]
    a, b = a[keep], b[keep]
    d = a - b
    pairs = np.unique(pair)
    out: dict[str, Any] = {"n_pairs": int(pairs.size), "n_units": int(d.size)}

    # Per pair.
    pair_diff = np.array([d[pair == p].mean() for p in pairs])
    pair_test = paired_wilcoxon(pair_diff) if pairs.size >= 2 else None
    # Per model: each (model, unit) once.
    values_a = _model_values(names_a, units, a)
    values_b = _model_values(names_b, units, b)
    mean_a_models = np.array([v.mean() for v in values_a])
    mean_b_models = np.array([v.mean() for v in values_b])
    if len(values_a) and len(values_b):
        mwu_p, delta = mann_whitney(mean_a_models, mean_b_models)
    else:
        mwu_p, delta = math.nan, math.nan

    low = high = p_value = math.nan
    if design == "paired":
        out["mean_a"] = mean_or_nan(np.array([a[pair == p].mean() for p in pairs]))
        out["mean_b"] = mean_or_nan(np.array([b[pair == p].mean() for p in pairs]))
        out["mean_diff"] = mean_or_nan(pair_diff)
        if pairs.size >= 2:
            groups = [d[pair == p] for p in pairs]
            samples = hierarchical_bootstrap_means(groups, n_boot=n_boot, generator=generator)
            low, high = _interval(samples, confidence)
            p_value = pair_test.pvalue if pair_test else math.nan
        positive = int((pair_diff > 0).sum())
        negative = int((pair_diff < 0).sum())
        compared = int(pair_diff.size)
        noun = "pairs" if compared != 1 else "pair"
    else:
        out["mean_a"] = mean_or_nan(mean_a_models)
        out["mean_b"] = mean_or_nan(mean_b_models)
        out["mean_diff"] = out["mean_a"] - out["mean_b"]
        if len(values_a) >= 2 and len(values_b) >= 2:
            boot_a = hierarchical_bootstrap_means(values_a, n_boot=n_boot, generator=generator)
            boot_b = hierarchical_bootstrap_means(values_b, n_boot=n_boot, generator=generator)
            low, high = _interval(boot_a - boot_b, confidence)
            p_value = mwu_p
        grid = mean_a_models[:, None] - mean_b_models[None, :]
        positive = int((grid > 0).sum())
        negative = int((grid < 0).sum())
        compared = int(grid.size)
        noun = "model pairings"
    out.update(
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        n_positive=positive,
        n_negative=negative,
        n_compared=compared,
        signs=sign_text(positive, negative, compared, labels, noun),
    )

    # Descriptive: units pooled over pairs (not independent).
    unit_test = paired_wilcoxon(d)
    unit_low, unit_high = bootstrap_mean_ci(
        d, None, n_boot=n_boot, confidence=confidence, generator=generator
    )
    out.update(
        unit_mean_diff=mean_or_nan(d),
        median_diff=float(np.median(d)) if d.size else math.nan,
        unit_ci_low=unit_low,
        unit_ci_high=unit_high,
        wilcoxon_p=unit_test.pvalue,
        rank_biserial=unit_test.rank_biserial,
        pair_wilcoxon_p=pair_test.pvalue if pair_test else math.nan,
        mannwhitney_p=mwu_p,
        cliffs_delta=delta,
    )
    return {key: nan_clean(value) for key, value in out.items()}


def _model_values(
    models: Sequence[str], units: Sequence[str], values: np.ndarray
) -> list[np.ndarray]:
    """Per model (first-seen order), its units' values, each unit once."""
    seen: dict[str, dict[str, float]] = {}
    for model, name, value in zip(models, units, values):
        seen.setdefault(model, {}).setdefault(name, float(value))
    return [np.array(list(v.values())) for v in seen.values()]
