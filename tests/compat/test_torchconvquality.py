"""The torchconvquality drop-in against torchconvquality 0.3.0 itself.

Keys, key order and value types must be equal; values within 1e-6, NaN where the
package gives NaN; where they differ, the difference is one of the documented cases
(docs/compat.md) and is checked to be exactly that.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import filterstats as fs
from filterstats.compat import torchconvquality as ours
from tests.test_native import near_threshold_layer

tcq = pytest.importorskip("torchconvquality")

TOLERANCE = 1e-6
ENTROPY_KEYS = (
    "variance_entropy",
    "variance_entropy_norm",
    "variance_entropy_clean",
    "variance_entropy_clean_norm",
)


def _weight(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)


def _zero_ratio(weight: torch.Tensor, key: str, eps: float) -> bool:
    """Whether the package's variance ratios for ``key`` hold an exact 0 (its 0 log 0 = NaN)."""
    rows = weight.detach().reshape(weight.shape[0] * weight.shape[1], -1)
    if "clean" in key:
        _, sparse = tcq.sparsity(weight.detach(), sparsity_eps=eps)
        rows = rows[~sparse]
    return bool((tcq._svd_variance_ratio(rows) == 0).any())


def assert_same_layer(theirs: dict, mine: dict, weight: torch.Tensor, eps: float = 0.01) -> None:
    """Equal keys and types, values within 1e-6 after the documented live-layer differences.

    Two differences apply to live layers, each checked to be exactly what the docs say:
    an all-zero output filter adds 1 to the package's sum (filterstats: 0), and an
    explained-variance ratio of exactly 0 makes the package's entropy NaN (0 log 0).
    """
    assert list(mine) == list(theirs) == list(ours.KEYS)
    expected = dict(theirs)
    n_out = weight.shape[0]
    n_dead = int((weight.detach().reshape(n_out, -1) == 0).all(dim=1).sum())
    if 0 < n_dead < n_out and n_out > 1:
        expected["orthogonality"] = theirs["orthogonality"] + n_dead / (n_out * (n_out - 1))
    for key in ENTROPY_KEYS:
        if math.isnan(theirs[key]) and not math.isnan(mine[key]):
            assert _zero_ratio(weight, key, eps), f"{key}: NaN in the package for no known reason"
            expected[key] = mine[key]
    for key, reference in expected.items():
        value = mine[key]
        assert type(value) is type(theirs[key]), (key, type(value), type(theirs[key]))
        if math.isnan(reference):
            assert math.isnan(value), (key, value)
        elif math.isnan(value) or abs(value - reference) > TOLERANCE:
            raise AssertionError(f"{key}: filterstats {value!r}, torchconvquality {reference!r}")


def assert_same_model(model: nn.Module, eps: float = 0.01) -> None:
    theirs = tcq.measure_quality(model, sparsity_eps=eps)
    mine = ours.measure_quality(model, sparsity_eps=eps)
    assert list(mine) == list(theirs)
    modules = dict(model.named_modules())
    for name in theirs:
        assert_same_layer(theirs[name], mine[name], modules[name].weight, eps)


# ------------------------------------------------------------------- whole models


@pytest.mark.parametrize("kind", ["normal", "robust"])
@pytest.mark.parametrize("seed", fs.demo.available_seeds())
def test_demo_models_match_the_package(kind, seed):
    model = fs.demo.load_model(kind, seed)
    assert_same_model(model)
    assert list(ours.measure_quality(model)) == ["conv1", "conv2", "conv3", "conv4", "conv5"]


def _random_stack(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, bias=False),
        nn.Conv2d(64, 64, 3, groups=4),  # grouped
        nn.Conv2d(64, 64, 3, groups=64),  # depthwise
        nn.Conv2d(64, 16, 1),  # 1x1: skipped by both
        nn.Sequential(nn.Conv2d(16, 130, 3), nn.Conv2d(130, 7, 5)),  # 5x5: skipped by both
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [0.01, 0.05, 0.3])
def test_random_conv_stacks_match_the_package(seed, eps):
    assert_same_model(_random_stack(seed), eps)


def test_layers_with_sparse_and_near_threshold_kernels_match():
    model = nn.Sequential(nn.Conv2d(1, 64, 3, bias=False), nn.Conv2d(64, 8, 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(near_threshold_layer().reshape(64, 1, 3, 3))
        sparse = _weight(8, 64, 3, 3, seed=3)
        sparse[:, ::3] *= 1e-3  # a third of the kernels sparse
        model[1].weight.copy_(sparse)
    assert_same_model(model)
    assert ours.measure_quality(model)["1"]["sparsity"] > 0.3


def test_float64_weights_match():
    model = _random_stack(5).double()
    assert_same_model(model)


def test_a_wrapped_model_keeps_the_package_names():
    model = nn.DataParallel(_random_stack(0))  # on CPU: a plain wrapper
    assert list(ours.measure_quality(model)) == list(tcq.measure_quality(model))
    assert next(iter(ours.measure_quality(model))).startswith("module.")
    assert list(ours.measure_quality(model, include_skipped=True)) == list(
        tcq.measure_quality(model)
    )


def test_the_whole_model_is_one_batched_measure(monkeypatch):
    calls = []
    original = ours.measure

    def counting(*args, **kwargs):
        calls.append(kwargs.get("definition"))
        return original(*args, **kwargs)

    monkeypatch.setattr(ours, "measure", counting)
    assert len(ours.measure_quality(_random_stack(0))) == 5
    assert calls == ["torchconvquality"]


def test_the_model_is_not_changed():
    model = _random_stack(1).train()
    model[2].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    ours.measure_quality(model, include_skipped=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(m.training for m in model.modules())


# ---------------------------------------------------------- one layer, one weight


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_measure_layer_quality_matches(groups):
    torch.manual_seed(groups)
    conv = nn.Conv2d(16, 24, 3, groups=groups)
    assert_same_layer(
        tcq.measure_layer_quality(conv), ours.measure_layer_quality(conv), conv.weight
    )


@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (8, 4, 1, 1), (6, 2, 5, 5), (32, 1, 3, 3)])
def test_measure_conv_weight_quality_matches(shape):
    weight = _weight(*shape, seed=7)
    assert_same_layer(
        tcq.measure_conv_weight_quality(weight), ours.measure_conv_weight_quality(weight), weight
    )


# -------------------------------------------------------------- degenerate layers

LIVE_DEGENERATE = {
    "two kernels": lambda: _weight(2, 1, 3, 3),
    "five kernels": lambda: _weight(5, 1, 3, 3, seed=1),
    "one non-sparse kernel": lambda: _one_live(1),
    "two non-sparse kernels": lambda: _one_live(2),
    "depthwise": lambda: _weight(16, 1, 3, 3, seed=2),
}


def _one_live(n_live: int) -> torch.Tensor:
    weight = _weight(8, 4, 3, 3, seed=4) * 1e-4
    weight[0, :n_live] = _weight(n_live, 3, 3, seed=5)
    return weight


@pytest.mark.parametrize("case", list(LIVE_DEGENERATE))
def test_small_and_sparse_layers_match(case):
    weight = LIVE_DEGENERATE[case]()
    theirs = tcq.measure_conv_weight_quality(weight)
    mine = ours.measure_conv_weight_quality(weight)
    assert_same_layer(theirs, mine, weight)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # the package's log2(0)
def test_all_zero_layer_is_nan_where_the_package_reports_artefacts():
    weight = torch.zeros(8, 4, 3, 3)
    theirs = tcq.measure_conv_weight_quality(weight)
    with pytest.warns(fs.FilterStatsWarning, match="all zeros"):
        mine = ours.measure_conv_weight_quality(weight)
    assert mine["n"] == theirs["n"] == 32
    assert mine["sparsity"] == theirs["sparsity"] == 1.0
    # The package: entropies 0 (-0.0 for the clean normalised one), orthogonality
    # 1 - 1/(n - 1) from the diagonal of W W^T - I. filterstats: NaN.
    assert [theirs[key] for key in ENTROPY_KEYS] == [0.0, 0.0, 0.0, 0.0]
    assert theirs["orthogonality"] == pytest.approx(1 - 1 / 7)
    assert all(math.isnan(mine[key]) for key in (*ENTROPY_KEYS, "orthogonality"))


@pytest.mark.parametrize("shape", [(1, 4, 3, 3), (1, 1, 3, 3)])
def test_single_output_filter_orthogonality_is_nan(shape):
    weight = _weight(*shape, seed=8)
    theirs = tcq.measure_conv_weight_quality(weight)
    with pytest.warns(fs.FilterStatsWarning, match="single output filter"):
        mine = ours.measure_conv_weight_quality(weight)
    assert theirs["orthogonality"] == -math.inf or math.isnan(theirs["orthogonality"])
    assert math.isnan(mine["orthogonality"])
    theirs["orthogonality"] = mine["orthogonality"]
    assert_same_layer(theirs, mine, weight)


@pytest.mark.parametrize("n_dead", [1, 3])
def test_dead_output_filters_count_as_orthogonal(n_dead):
    weight = _weight(8, 4, 3, 3, seed=9)
    weight[:n_dead] = 0.0
    theirs = tcq.measure_conv_weight_quality(weight)
    mine = ours.measure_conv_weight_quality(weight)
    n = weight.shape[0]
    # The package adds |0 - 1| = 1 per dead filter on the diagonal: exactly this less.
    assert mine["orthogonality"] - theirs["orthogonality"] == pytest.approx(
        n_dead / (n * (n - 1)), abs=TOLERANCE
    )
    assert_same_layer(theirs, mine, weight)  # the same correction, for every other key


def test_identical_kernels_have_entropy_zero():
    weight = _weight(1, 1, 3, 3).expand(8, 4, 3, 3).contiguous()
    theirs = tcq.measure_conv_weight_quality(weight)
    mine = ours.measure_conv_weight_quality(weight)
    assert [mine[key] for key in ENTROPY_KEYS] == [0.0, 0.0, 0.0, 0.0]
    for key in ENTROPY_KEYS:  # the package: NaN (0 log 0) or rounding noise near 0
        assert math.isnan(theirs[key]) or abs(theirs[key]) < 1e-3
    assert mine["orthogonality"] == pytest.approx(theirs["orthogonality"], abs=TOLERANCE)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_weights_give_nan_where_the_package_raises(bad):
    weight = _weight(8, 4, 3, 3, seed=10)
    weight[2, 1, 0, 0] = bad
    with pytest.raises(torch.linalg.LinAlgError):
        tcq.measure_conv_weight_quality(weight)
    with pytest.warns(fs.FilterStatsWarning, match="non-finite"):
        mine = ours.measure_conv_weight_quality(weight)
    assert mine["n"] == 32
    assert all(math.isnan(mine[key]) for key in ours.KEYS if key != "n")


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # the package's log2(0)
def test_sparsity_eps_zero_means_no_sparse_kernel():
    # The package's "threshold 0 becomes 1" (meant for all-zero layers) makes every
    # kernel with |w| < 1 sparse at sparsity_eps=0.
    weight = _weight(8, 4, 3, 3, seed=11) * 0.1
    assert tcq.measure_conv_weight_quality(weight, sparsity_eps=0.0)["sparsity"] == 1.0
    assert ours.measure_conv_weight_quality(weight, sparsity_eps=0.0)["sparsity"] == 0.0


# ------------------------------------------------------- the layers it skips


class StdConv2d(nn.Conv2d):
    """A Conv2d subclass (weight standardisation, as timm's): the package skips it."""


def _mixed_model() -> nn.Sequential:
    torch.manual_seed(12)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        StdConv2d(8, 8, 3),
        nn.ConvTranspose2d(8, 8, 3),
        nn.utils.parametrizations.weight_norm(nn.Conv2d(8, 8, 3)),
        nn.Conv2d(8, 8, 3),
        nn.Conv2d(8, 8, 1),
    )
    return model


def test_default_measures_exactly_the_package_layers():
    model = _mixed_model()
    assert list(ours.measure_quality(model)) == list(tcq.measure_quality(model)) == ["0", "4"]
    assert_same_model(model)


def test_include_skipped_adds_the_other_3x3_convolutions_in_model_order():
    model = _mixed_model()
    everything = ours.measure_quality(model, include_skipped=True)
    assert list(everything) == ["0", "1", "2", "3", "4"]
    package = tcq.measure_quality(model)
    alone = ours.measure_quality(model)
    for name in package:
        assert everything[name] == pytest.approx(alone[name], abs=1e-12)
    # A subclass: the package's own per-layer function gives the same numbers.
    assert_same_layer(tcq.measure_layer_quality(model[1]), everything["1"], model[1].weight)
    # Transposed and parametrised layers: their effective weights, out x in.
    filters = fs.extract_filters(model, depth="registration")
    for name in ("2", "3"):
        weight = filters[name].weight.contiguous()  # the package needs `view`
        assert_same_layer(tcq.measure_conv_weight_quality(weight), everything[name], weight)


def test_a_model_without_package_layers_warns_and_returns_empty():
    model = nn.Sequential(StdConv2d(3, 8, 3), nn.Conv2d(8, 8, 1))
    assert tcq.measure_quality(model) == {}
    with pytest.warns(fs.FilterStatsWarning, match="include_skipped=True"):
        assert ours.measure_quality(model) == {}
    assert list(ours.measure_quality(model, include_skipped=True)) == ["0"]


# ------------------------------------------------------------------- arguments


def test_other_keywords_are_ignored_with_a_warning():
    model = _random_stack(0)
    with pytest.warns(fs.FilterStatsWarning, match=r"ignored keyword argument\(s\) \['foo'\]"):
        result = ours.measure_quality(model, foo=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert result == ours.measure_quality(model)


def test_bad_arguments_give_clear_errors():
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        ours.measure_quality(torch.zeros(3, 3, 3, 3))
    with pytest.raises(TypeError, match="`conv_layer`"):
        ours.measure_layer_quality(nn.ReLU())
    with pytest.raises(ValueError, match="must be 4-D"):
        ours.measure_conv_weight_quality(torch.zeros(3, 3, 3))
    with pytest.raises(ValueError, match="eps"):
        ours.measure_quality(_random_stack(0), sparsity_eps=1.5)
    with pytest.raises(TypeError, match="sparsity_eps"):
        ours.measure_quality(_random_stack(0), sparsity_eps="0.01")
    with pytest.raises(ValueError, match="meta device"):
        ours.measure_quality(nn.Conv2d(3, 8, 3, device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_weights_match_the_package_on_cpu():
    model = _random_stack(3)
    on_gpu = ours.measure_quality(model.cuda())
    reference = tcq.measure_quality(model.cpu())
    for name in reference:
        assert_same_layer(reference[name], on_gpu[name], model.get_submodule(name).weight)
