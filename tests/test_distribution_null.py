"""The nulls of ``filter_divergence``: kernel reassignment, model-label permutations, Holm."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import filterstats as fs
import filterstats.demo as demo
from filterstats._version import __version__
from filterstats.distribution import DivergenceByDepth


def small_net(seed: int, shift: float = 0.0, shifted_layer: int | None = None) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))
    if shifted_layer is not None:
        with torch.no_grad():
            net[shifted_layer].weight[:, :, 1, 1] += shift
    return net


def plain_coefficients(net: nn.Module, basis) -> list[np.ndarray]:
    """Per layer: (all scaled kernels, non-sparse mask) projected on the basis, float64."""
    out = []
    comps, mean = basis.components.numpy(), basis.mean.numpy()
    for conv in net:
        rows = conv.weight.detach().double().reshape(-1, 9).numpy()
        peak = np.abs(rows).max(axis=1)
        keep = peak > 0.01 * np.abs(rows).max()
        out.append(((rows / np.where(peak == 0, 1, peak)[:, None] - mean) @ comps.T, keep))
    return out


def plain_d(coeff_a: np.ndarray, coeff_b: np.ndarray, weights, value_range, bins=70) -> float:
    total = 0.0
    for k in range(coeff_a.shape[1]):
        hists = []
        for data in (coeff_a[:, k], coeff_b[:, k]):
            v, _ = np.histogram(data, range=value_range, bins=bins, density=True)
            v = v.astype(np.double)
            v[v == 0] = np.finfo(np.float32).eps
            hists.append(v / v.sum())
        p, q = hists
        total += weights[k] * (np.sum(p * np.log(p / q)) + np.sum(q * np.log(q / p)))
    return float(total)


def group_coefficients(nets, layer, basis):
    parts = [plain_coefficients(n, basis)[layer] for n in nets]
    return np.concatenate([c[m] for c, m in parts])


@pytest.mark.parametrize("paired", [True, False])
def test_p_value_equals_brute_force_enumeration(paired):
    a = [small_net(s, 0.05, 2) for s in range(3)]
    b = [small_net(10 + s) for s in range(3 if paired else 2)]
    # A fixed range: the default ends at the largest coefficient, which the plain
    # float64 projection may round to just outside.
    result = fs.filter_divergence(
        a, b, depth_bins=2, paired=paired, n_null=0, value_range=(-2.5, 2.5)
    )
    weights = result.basis.explained_variance_ratio.numpy()
    everything = a + b
    if paired:  # every swap vector over the 3 pairs: 8 relabellings, 4 distinct
        labelings = []
        for swaps in itertools.product((0, 1), repeat=3):
            ga = [b[i] if s else a[i] for i, s in enumerate(swaps)]
            gb = [a[i] if s else b[i] for i, s in enumerate(swaps)]
            labelings.append((ga, gb))
    else:  # every choice of 3 of the 5 models as group a: 10 relabellings
        labelings = [
            ([everything[i] for i in chosen], [everything[i] for i in range(5) if i not in chosen])
            for chosen in itertools.combinations(range(5), 3)
        ]
    for layer, row in enumerate(result.by_depth):  # "first", (0, 0.5], (0.5, 1]
        observed = plain_d(group_coefficients(a, layer, result.basis),
                           group_coefficients(b, layer, result.basis), weights,
                           result.value_range)  # fmt: skip
        assert row.divergence == pytest.approx(observed, rel=1e-9)
        values = [
            plain_d(group_coefficients(ga, layer, result.basis),
                    group_coefficients(gb, layer, result.basis), weights, result.value_range)
            for ga, gb in labelings
        ]  # fmt: skip
        expected = np.mean(np.array(values) >= observed * (1 - 1e-9))
        assert row.p_value == pytest.approx(expected, abs=1e-12), row.bin
    assert result.permutations == "exact"
    assert result.n_relabellings == (4 if paired else 10)
    assert result.p_min == pytest.approx(1 / result.n_relabellings)


def test_p_value_with_a_shared_twin_equals_brute_force_enumeration():
    """Twin n1 serves pairs 0 and 1: some model of {r0, r1, n1} takes its role (listed
    twice in b) in every relabelling; pair 2 swaps. 3 x 2 = 6 relabellings."""
    r = [small_net(s, 0.05, 2) for s in range(3)]
    n1, n3 = small_net(20), small_net(21)
    result = fs.filter_divergence(r, [n1, n1, n3], depth_bins=2, n_null=0,
                                  value_range=(-2.5, 2.5))  # fmt: skip
    assert result.design == "paired" and result.permutations == "exact"
    assert result.n_relabellings == 6 and result.p_min == pytest.approx(1 / 6)
    weights = result.basis.explained_variance_ratio.numpy()
    cluster = [r[0], r[1], n1]
    labelings = []
    for twin in range(3):
        others = [m for i, m in enumerate(cluster) if i != twin]
        for swap in (False, True):
            last_a, last_b = (n3, r[2]) if swap else (r[2], n3)
            labelings.append(([*others, last_a], [cluster[twin], cluster[twin], last_b]))

    def d(ga, gb, layer):
        return plain_d(group_coefficients(ga, layer, result.basis),
                       group_coefficients(gb, layer, result.basis), weights, result.value_range)  # fmt: skip

    for layer, row in enumerate(result.by_depth):
        observed = d(r, [n1, n1, n3], layer)
        assert row.divergence == pytest.approx(observed, rel=1e-9)
        values = [d(ga, gb, layer) for ga, gb in labelings]
        assert row.p_value == pytest.approx(np.mean(np.array(values) >= observed * (1 - 1e-9)))


def test_kernel_null_mean_matches_random_kernel_reassignment():
    a, b = [small_net(1)], [small_net(2)]
    result = fs.filter_divergence(a, b, depth_bins=2, n_null=400, seed=3, value_range=(-2.5, 2.5))
    weights = result.basis.explained_variance_ratio.numpy()
    rng = np.random.default_rng(0)
    for layer, row in enumerate(result.by_depth):
        pooled = np.concatenate([group_coefficients(a, layer, result.basis),
                                 group_coefficients(b, layer, result.basis)])  # fmt: skip
        draws = []
        for _ in range(400):  # the whole kernel (all components) reassigned at once
            order = rng.permutation(len(pooled))
            draws.append(plain_d(pooled[order[: row.n_a]], pooled[order[row.n_a :]], weights,
                                 result.value_range))  # fmt: skip
        error = np.std(draws) * math.sqrt(2 / 400)
        assert row.null_mean == pytest.approx(np.mean(draws), abs=4 * error + 1e-12), row.bin
        assert row.corrected == pytest.approx(row.divergence - row.null_mean)
        assert row.null_q95 >= row.null_mean


def test_seeded_and_deterministic():
    a, b = [small_net(s) for s in range(3)], [small_net(10 + s) for s in range(3)]
    one = fs.filter_divergence(a, b, depth_bins=2, seed=5)
    two = fs.filter_divergence(a, b, depth_bins=2, seed=5)
    other = fs.filter_divergence(a, b, depth_bins=2, seed=6)
    assert one.to_records() == two.to_records()
    assert one["all"].null_mean != other["all"].null_mean
    assert one["all"].divergence == other["all"].divergence


# ------------------------------------------------------------------ demo controls


@pytest.fixture(scope="module")
def demo_models():
    return {(kind, seed): demo.load_model(kind, seed=seed)
            for kind in ("normal", "robust") for seed in range(3)}  # fmt: skip


def test_demo_same_kind_single_models_no_inference_and_small_correction(demo_models):
    for kind in ("normal", "robust"):
        result = fs.filter_divergence(demo_models[kind, 0], demo_models[kind, 1], depth_bins=4)
        first = result["first"]
        assert first.n_a == first.n_b == 16 and first.few_kernels
        assert first.divergence > 15  # the raw estimator is large ...
        assert abs(first.corrected) < 0.15 * first.divergence  # ... and mostly bias
        assert all(math.isnan(r.p_value) and math.isnan(r.p_adjusted) for r in result)
        assert result.permutations == "not available"
        assert "not available" in repr(result) and "no inference" in repr(result)


def test_demo_same_kind_groups_nothing_significant(demo_models):
    n, r = (
        [demo_models[kind, s] for s in range(3)] for kind in ("normal", "robust")
    )  # fmt: skip
    controls = [
        fs.filter_divergence(n[:1], n[1:], depth_bins=4, labels=("normal0", "normal1+2")),
        fs.filter_divergence(r[:1], r[1:], depth_bins=4, labels=("robust0", "robust1+2")),
        fs.filter_divergence([n[0], r[0]], [n[1], r[1]], depth_bins=4, labels=("s0", "s1")),
    ]
    for result in controls:
        adjusted = [row.p_adjusted for row in result.by_depth]
        assert all(np.isfinite(adjusted)), result
        assert min(adjusted) > 0.05
        assert abs(result["first"].corrected) < 0.5 * result["first"].divergence
    # The robust-vs-normal demo groups: computed the same way, 3 pairs -> 4 relabellings.
    shift = fs.filter_divergence(r, n, depth_bins=4)
    assert shift.design == "paired" and shift.n_relabellings == 4 and shift.p_min == 0.25
    assert all(0.25 <= row.p_value <= 1 for row in shift)
    assert all(math.isfinite(row.baseline_a) and math.isfinite(row.baseline_b)
               for row in shift.by_depth)  # fmt: skip


def test_demo_table_golden_and_exports_carry_provenance(demo_models, golden, tmp_path):
    n, r = ([demo_models[k, s] for s in range(3)] for k in ("normal", "robust"))
    result = fs.filter_divergence(r, n, depth_bins=4, labels=("robust", "normal"))
    golden.check("divergence_demo", repr(result).replace(__version__, "VERSION") + "\n")
    assert result.provenance()["version"] == __version__
    csv = result.to_csv(tmp_path / "d.csv")
    first = csv.splitlines()[0]
    assert first.startswith("# filterstats ")
    wanted = {"eps", "bins", "value_range", "n_null", "seed", "null_definition", "version",
              "n_models", "design", "p_min", "kernel_size", "twins"}  # fmt: skip
    assert wanted <= set(json.loads(first[len("# filterstats ") :]))
    payload = json.loads((tmp_path / "d.csv").read_text().splitlines()[0][14:])
    assert payload["n_models"] == [3, 3] and payload["n_null"] == 200
    data = json.loads(result.to_json(tmp_path / "d.json"))
    assert wanted <= set(data["filterstats"]) and len(data["rows"]) == len(result)
    assert data["rows"][0]["few_kernels"] is True
    assert "p_adjusted" in data["rows"][0] and "null_mean" in data["rows"][0]
    html = result._repr_html_()
    assert "n_null=200" in html and "smallest attainable p 0.25" in html and __version__ in html
    pytest.importorskip("pandas")
    assert result.to_pandas().attrs["filterstats"]["seed"] == 0


# -------------------------------------------------------------- planted shift


def wide_net(seed: int, shift: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(*[nn.Conv2d(16, 16, 3) for _ in range(6)])
    with torch.no_grad():
        net[3].weight[:, :, 1, 1] += shift  # depth 0.6: the bin (0.4, 0.6]
    return net


def test_planted_shift_found_in_its_bin_only():
    shifted = [wide_net(s, shift=0.04) for s in range(6)]
    normal = [wide_net(100 + s) for s in range(6)]
    result = fs.filter_divergence(shifted, normal, depth_bins=5, paired=False, n_null=50)
    assert result.permutations == "exact" and result.n_relabellings == 462
    significant = [row.bin for row in result.by_depth if row.p_adjusted < 0.05]
    assert significant == ["(0.4, 0.6]"]
    planted = result["(0.4, 0.6]"]
    others = [row for row in result.by_depth if row.bin != "(0.4, 0.6]"]
    assert planted.corrected > 5 * max(abs(row.corrected) for row in others)
    assert planted.corrected > 2 * max(abs(planted.baseline_a), abs(planted.baseline_b))


# ---------------------------------------------------------------- calibration


@pytest.mark.parametrize(
    ("twins_of", "n_relabellings", "level"),
    [
        # 6 plain pairs: 2^5 = 32 relabellings; p <= 4/32 has probability 1/8.
        ([0, 1, 2, 3, 4, 5], 32, 4 / 32),
        # Pairs 0-1 and 2-3 share a twin (as in the paper's lists): 3 * 3 * 2 * 2 = 36.
        ([0, 0, 1, 1, 2, 3], 36, 4 / 36),
    ],
    ids=["pairs", "shared twins"],
)
def test_per_bin_test_is_calibrated_on_null_groups(twins_of, n_relabellings, level):
    """Models of both groups from one distribution, each model with its own offset (so
    kernels of two models differ): the model-label test rejects at its nominal level."""
    rng = np.random.default_rng(2024)
    runs, pairs = 200, len(twins_of)
    rejections = 0
    basis = fs.pca_basis(torch.from_numpy(rng.normal(size=(500, 9))))  # fixed: one pass each

    def model():
        offset = rng.normal(scale=0.4, size=(1, 1, 3, 3))
        return torch.from_numpy(rng.normal(size=(8, 8, 3, 3)) + offset)

    for _ in range(runs):
        robust = [model() for _ in range(pairs)]
        twins = [model() for _ in range(max(twins_of) + 1)]
        result = fs.filter_divergence(
            robust, [twins[i] for i in twins_of], n_null=0, basis=basis, value_range=(-4.0, 4.0)
        )
        assert result.n_relabellings == n_relabellings and result.permutations == "exact"
        rejections += result["first"].p_value <= level + 1e-12
    expected = runs * level
    sd = math.sqrt(runs * level * (1 - level))
    assert abs(rejections - expected) <= 3 * sd, (rejections, expected)


def test_holm_over_depth_bins():
    from filterstats._stats import holm

    a, b = [small_net(s) for s in range(4)], [small_net(10 + s) for s in range(4)]
    result = fs.filter_divergence(a, b, depth_bins=2, n_null=0)
    raw = [row.p_value for row in result.by_depth]
    np.testing.assert_allclose([row.p_adjusted for row in result.by_depth], holm(np.array(raw)))
    assert result["all"].p_adjusted == result["all"].p_value
    assert isinstance(result, DivergenceByDepth)


def test_histogram_counts_bin_as_numpy_on_edges_and_outside():
    from filterstats.distribution import _edges, _histogram_counts

    rng = np.random.default_rng(1)
    for _ in range(200):
        n, bins = int(rng.integers(1, 200)), int(rng.integers(1, 80))
        low, high = sorted(rng.normal(size=2) * 3)
        edges = _edges((low, high), bins)
        x = rng.uniform(low - 0.5, high + 0.5, size=(n, 3))
        x[: n // 3] = rng.choice(edges, size=(n // 3, 3))  # exactly on the edges
        x[0, 0] = np.nextafter(edges[-1], np.inf)  # just outside, both ends
        x[-1, 1] = np.nextafter(edges[0], -np.inf)
        got = _histogram_counts(torch.from_numpy(x), edges).numpy()
        want = [np.histogram(x[:, k], bins=bins, range=(edges[0], edges[-1]))[0] for k in range(3)]
        np.testing.assert_array_equal(got, np.stack(want))


def test_a_bin_without_layers_says_so_rather_than_few_kernels():
    from filterstats.distribution import DivergenceRow, _row_note

    assert _row_note(DivergenceRow("(0.5, 0.75]", 0, 0, math.nan, few_kernels=True)) == "no layers"
    one_side = DivergenceRow("(0.5, 0.75]", 0, 40, math.nan, few_kernels=True)
    assert _row_note(one_side) == "no layers in one group"
    assert _row_note(DivergenceRow("first", 16, 16, 1.0, few_kernels=True)) == "few kernels"
    assert _row_note(DivergenceRow("first", 900, 900, 1.0)) == ""
