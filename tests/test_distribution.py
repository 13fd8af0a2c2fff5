from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import filterstats as fs
from filterstats.distribution import PCABasis
from tests.conftest import model_fingerprint


def make_net(seed: int, depth: int = 6, shift: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), *[nn.Conv2d(8, 8, 3) for _ in range(depth - 1)])
    with torch.no_grad():
        for conv in net:
            conv.weight[:, :2] = 0.0  # some sparse kernels
            conv.weight[:, :, 1, 1] += shift  # a known move towards the centre tap
    return net


def plain_scaled(weight: torch.Tensor, eps: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    rows = weight.detach().double().reshape(-1, 9).numpy()
    peak = np.abs(rows).max(axis=1)
    nonsparse = peak > eps * np.abs(rows).max()
    return rows / np.where(peak == 0, 1, peak)[:, None], nonsparse


def test_pca_matches_sklearn():
    decomposition = pytest.importorskip("sklearn.decomposition")
    nets = [make_net(0), make_net(1)]
    rows = np.concatenate([s[m] for n in nets for s, m in (plain_scaled(c.weight) for c in n)])
    reference = decomposition.PCA(9).fit(rows)
    basis = fs.pca_basis(nets)
    assert basis.n_filters == rows.shape[0]
    np.testing.assert_allclose(basis.explained_variance_ratio, reference.explained_variance_ratio_,
                               rtol=1e-8)  # fmt: skip
    cosine = np.abs(np.sum(basis.components.numpy() * reference.components_, axis=1))
    np.testing.assert_allclose(cosine, 1.0, atol=1e-8)
    np.testing.assert_allclose(basis.cumulative[-1], 1.0)


def paper_divergence(nets_a, nets_b, basis: PCABasis, bins: int = 70):
    """The paper's recipe, recomputed plainly with numpy/scipy."""
    comps, mean = basis.components.numpy(), basis.mean.numpy()
    weights = basis.explained_variance_ratio.numpy()
    project = lambda x: (x - mean) @ comps.T  # noqa: E731
    everything = [project(plain_scaled(c.weight)[0]) for n in nets_a + nets_b for c in n]
    low, high = min(x.min() for x in everything), max(x.max() for x in everything)

    def distribution(nets, layer):
        data = np.concatenate(
            [project(s[m]) for s, m in [plain_scaled(n[layer].weight) for n in nets]]
        )
        out = []
        for column in data.T:
            v, _ = np.histogram(column, range=(low, high), bins=bins, density=True)
            v = v.astype(np.double)
            v[v == 0] = np.finfo(np.float32).eps
            out.append(v / v.sum())
        return out

    result = []
    for layer in range(len(nets_a[0])):
        p, q = distribution(nets_a, layer), distribution(nets_b, layer)
        result.append(sum(w * (stats.entropy(x, y) + stats.entropy(y, x))
                          for w, x, y in zip(weights, p, q)))  # fmt: skip
    return result


def test_divergence_equals_the_papers_recipe():
    nets_a = [make_net(0, shift=0.3), make_net(1, shift=0.3)]
    nets_b = [make_net(2), make_net(3)]
    result = fs.filter_divergence(nets_a, nets_b, depth_bins=5)
    expected = paper_divergence(nets_a, nets_b, result.basis)
    # 6 layers at depths 0, 0.2, ..., 1.0: "first", then one layer per fifth.
    assert [r.bin for r in result.by_depth] == ["first", "(0.0, 0.2]", "(0.2, 0.4]",
                                               "(0.4, 0.6]", "(0.6, 0.8]", "(0.8, 1.0]"]  # fmt: skip
    np.testing.assert_allclose([r.divergence for r in result.by_depth], expected, rtol=1e-9)
    counts_b = [sum(int(plain_scaled(n[i].weight)[1].sum()) for n in nets_b) for i in range(6)]
    assert [r.n_b for r in result.by_depth] == counts_b
    assert counts_b[1] == 2 * 8 * 6  # two zeroed input channels of 8 are sparse


def test_default_labels_claim_no_training_and_match_compare():
    a, b = make_net(0, shift=0.3), make_net(1)
    result = fs.filter_divergence([a], [b], depth_bins=2, n_null=0)
    assert result.labels == ("a", "b") == fs.compare(a, b, n_boot=20).labels
    assert repr(result).startswith("Distribution shift a vs b:")
    assert "robust" not in repr(result) and "normal" not in repr(result)
    for function in (fs.filter_divergence, fs.compare):
        assert inspect.signature(function).parameters["labels"].default == ("a", "b")
    named = fs.filter_divergence([a], [b], depth_bins=2, n_null=0, labels=("robust", "normal"))
    assert repr(named).startswith("Distribution shift robust vs normal:")


def test_divergence_zero_symmetric_and_growing():
    nets = [make_net(0), make_net(1)]
    same = fs.filter_divergence(nets, nets)
    assert all(r.divergence == 0 for r in same if not math.isnan(r.divergence))
    other = [make_net(5)]
    forward = fs.filter_divergence(nets, other)
    backward = fs.filter_divergence(other, nets, basis=forward.basis,
                                    value_range=forward.value_range)  # fmt: skip
    for f, b in zip(forward, backward):
        assert f.divergence == pytest.approx(b.divergence, rel=1e-12, nan_ok=True)
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4000, 3))
    weights = np.array([0.5, 0.3, 0.2])
    values = [fs.histogram_divergence(base, rng.normal(loc=shift, size=(4000, 3)), weights,
                                      value_range=(-6, 8))
              for shift in (0.0, 0.5, 1.0, 2.0)]  # fmt: skip
    assert values == sorted(values) and values[0] < 0.05 < values[1]


def test_empty_bins_are_nan_not_zero():
    stem = nn.Sequential(nn.Conv2d(3, 8, 7), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3))
    result = fs.filter_divergence(stem, make_net(0, depth=3))
    assert math.isnan(result["first"].divergence)  # no 3x3 layer at the first depth
    assert result["first"].n_a == 0
    assert math.isnan(result["(0.0, 0.1]"].divergence)
    assert result["(0.9, 1.0]"].divergence > 0


def test_twins_per_pair_or_unique():
    twin, other = make_net(1), make_net(2)
    robust = [make_net(3, shift=0.2), make_net(4, shift=0.2), make_net(5, shift=0.2)]
    per_pair = fs.filter_divergence(robust, [twin, twin, other])
    unique = fs.filter_divergence(robust, [twin, twin, other], twins="unique")
    assert per_pair["all"].n_b == 3 * unique["all"].n_b / 2
    assert per_pair["all"].divergence != unique["all"].divergence


class Guard(nn.Module):
    def forward(self, x):
        raise AssertionError("the forward pass must stop after the first convolution")


def test_first_layer_response_is_relu_of_the_first_conv_and_leaves_the_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), Guard()).train()
    before = model_fingerprint(net)
    x, noise = torch.rand(3, 8, 8), 0.03 * torch.randn(3, 8, 8)
    with pytest.warns(fs.FilterStatsWarning, match="registration order"):
        response = fs.first_layer_response(net, x, x + noise)  # Guard stops fx tracing too
    with torch.no_grad():
        clean = torch.relu(net[0](x[None]))
        perturbed = torch.relu(net[0]((x + noise)[None]))
    torch.testing.assert_close(response.clean, clean)
    torch.testing.assert_close(response.difference, perturbed - clean)
    assert response.layer == "0"
    assert model_fingerprint(net) == before
    with pytest.raises(ValueError, match="same shape"):
        fs.first_layer_response(net, x, x[:, :4], layer="0")
