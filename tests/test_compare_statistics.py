"""The comparison's inference over pairs against plain references written here."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
from scipy import stats

statistics = importlib.import_module("filterstats.compare.statistics")


def _reference_bootstrap(groups, n_boot, seed):
    """Resample pairs, then layers within each drawn pair; mean of the pair means.

    Draws the same random numbers in the same order as the library (documented in
    ``hierarchical_bootstrap_means``), then computes every resample with loops.
    """
    rng = np.random.default_rng(seed)
    k = len(groups)
    width = max(len(g) for g in groups)
    top = rng.integers(0, k, size=(n_boot, k))
    u = rng.random((n_boot, k, width))
    out = []
    for r in range(n_boot):
        pair_means = []
        for slot in range(k):
            g = groups[top[r, slot]]
            picked = [g[math.floor(u[r, slot, j] * len(g))] for j in range(len(g))]
            pair_means.append(sum(picked) / len(picked))
        out.append(sum(pair_means) / k)
    return np.array(out)


@pytest.mark.parametrize("seed", range(6))
def test_pair_level_bootstrap_matches_reference_loop(seed):
    rng = np.random.default_rng(100 + seed)
    k = int(rng.integers(2, 7))
    groups = [rng.normal(size=int(rng.integers(1, 9))) for _ in range(k)]
    if seed == 0:
        groups = [np.zeros(3), np.zeros(1)]  # degenerate: every resample is 0
    got = statistics.hierarchical_bootstrap_means(
        groups, n_boot=300, generator=np.random.default_rng(seed)
    )
    want = _reference_bootstrap([list(g) for g in groups], 300, seed)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_bootstrap_chunks_give_the_same_draws(monkeypatch):
    groups = [np.arange(5.0), np.arange(3.0) * 2, np.array([7.0])]
    whole = statistics.hierarchical_bootstrap_means(
        groups, n_boot=200, generator=np.random.default_rng(1)
    )
    monkeypatch.setattr(statistics, "_CHUNK_ELEMENTS", 15 * 7)  # chunks of 7 resamples
    chunked = statistics.hierarchical_bootstrap_means(
        groups, n_boot=200, generator=np.random.default_rng(1)
    )
    np.testing.assert_array_equal(whole, chunked)


def _entries(rng, n_pairs, layers, shift=0.0):
    pair, unit, a, b = [], [], [], []
    for p in range(n_pairs):
        for layer in range(layers):
            pair.append(p)
            unit.append(f"conv{layer}")
            base = rng.normal()
            a.append(base + shift + 0.3 * rng.normal())
            b.append(base + 0.3 * rng.normal())
    return np.array(pair), unit, np.array(a), np.array(b)


def test_paired_inference_against_reference():
    rng = np.random.default_rng(5)
    pair, unit, a, b = _entries(rng, 5, 4, shift=0.5)
    a[3] = math.nan  # left out
    models_a = [f"r{p}" for p in pair]
    models_b = [f"n{p}" for p in pair]
    got = statistics.infer(pair, models_a, models_b, unit, a, b, design="paired",
                           labels=("robust", "normal"), n_boot=400, confidence=0.9,
                           generator=np.random.default_rng(0))  # fmt: skip
    # Reference: pair-level mean differences with loops.
    diffs = []
    groups = []
    for p in range(5):
        d = [a[i] - b[i] for i in range(len(a)) if pair[i] == p and math.isfinite(a[i])]
        groups.append(d)
        diffs.append(sum(d) / len(d))
    assert got["n_pairs"] == 5 and got["n_units"] == 19
    assert got["mean_diff"] == pytest.approx(sum(diffs) / 5, abs=1e-12)
    boot = _reference_bootstrap(groups, 400, 0)
    low, high = np.quantile(boot, [0.05, 0.95])
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((low, high), abs=1e-12)
    assert got["p_value"] == pytest.approx(stats.wilcoxon(diffs, method="exact").pvalue)
    positive = sum(d > 0 for d in diffs)
    assert got["n_positive"] == positive and got["n_compared"] == 5
    assert got["signs"].startswith(
        f"robust > normal in {positive} of 5 pairs"
        if positive >= 5 - positive
        else f"normal > robust in {5 - positive} of 5 pairs"
    )


def test_one_pair_gives_no_inference_and_unpaired_uses_models():
    rng = np.random.default_rng(2)
    pair, unit, a, b = _entries(rng, 1, 6, shift=1.0)
    got = statistics.infer(pair, ["r"] * 6, ["n"] * 6, unit, a, b, design="paired",
                           labels=("r", "n"), n_boot=100, confidence=0.95,
                           generator=np.random.default_rng(0))  # fmt: skip
    assert math.isnan(got["ci_low"]) and math.isnan(got["p_value"])
    assert got["n_compared"] == 1 and math.isfinite(got["unit_ci_low"])
    # Unpaired: two robust models against one shared normal twin, then two twins.
    pair, unit, a, b = _entries(rng, 4, 3)
    models_a = [f"r{p}" for p in pair]
    models_b = [f"n{p % 2}" for p in pair]
    twin_values = rng.normal(size=(2, 3))  # the shared twins' layers
    b = np.array([twin_values[p % 2, int(u[-1])] for p, u in zip(pair, unit)])
    got = statistics.infer(pair, models_a, models_b, unit, a, b, design="unpaired",
                           labels=("r", "n"), n_boot=100, confidence=0.95,
                           generator=np.random.default_rng(0))  # fmt: skip
    means_a = [a[pair == p].mean() for p in range(4)]
    means_b = [b[(pair == q)].mean() for q in range(2)]
    assert got["mean_diff"] == pytest.approx(np.mean(means_a) - np.mean(means_b))
    assert got["n_compared"] == 8
    assert got["p_value"] == pytest.approx(stats.mannwhitneyu(means_a, means_b).pvalue)


def test_sign_text():
    labels = ("robust", "normal")
    assert statistics.sign_text(5, 0, 5, labels, "pairs") == "robust > normal in 5 of 5 pairs"
    assert statistics.sign_text(1, 3, 5, labels, "pairs") == (
        "normal > robust in 3 of 5 pairs (robust > normal in 1) (1 equal)"
    )
    assert statistics.sign_text(0, 0, 3, labels, "pairs") == "robust = normal in 3 of 3 pairs"
