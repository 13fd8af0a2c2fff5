"""Odd weights: non-finite values, degenerate layers, odd shapes, dtypes, layouts, sharing."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import filterstats as fs
from tests import reference as ref

METRICS = ("sparsity", "diversity", "orthogonality")


def _weight(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)


def _reference(metric: str, weight: torch.Tensor) -> float:
    array = weight.detach().to(torch.float64).numpy()
    if metric == "sparsity":
        return ref.sparsity(array)
    if metric == "diversity":
        return ref.entropy_paper(array)
    return ref.orthogonality(array)


def _with_nonfinite(value: float) -> torch.Tensor:
    weight = _weight(6, 4, 3, 3)
    weight[2, 1, 0, 0] = value  # one kernel (and one output filter) holds it
    return weight


# ------------------------------------------------------------------ NaN and inf


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("metric", METRICS)
def test_propagate_gives_nan_for_the_layer_only(metric, bad):
    good = _weight(6, 4, 3, 3, seed=1)
    values = getattr(fs, metric)([_with_nonfinite(bad), good])
    assert math.isnan(values[0])
    assert values[1].item() == pytest.approx(_reference(metric, good), abs=1e-6)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("metric", [*METRICS, "measure"])
def test_raise_names_the_layer_and_the_fix(metric, bad):
    filters = fs.extract_filters(_net_with_weight(_with_nonfinite(bad)))
    with pytest.raises(ValueError, match=r"\['conv'\].*nan_policy='omit'"):
        getattr(fs, metric)(filters, nan_policy="raise")


def test_analyze_raise_names_the_model_layer():
    model = _net_with_weight(_with_nonfinite(math.nan))
    with pytest.raises(ValueError, match=r"\['conv'\]"):
        fs.analyze(model, nan_policy="raise")


def _nonfinite_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [
        str(w.message)
        for w in caught
        if issubclass(w.category, fs.FilterStatsWarning) and "non-finite" in str(w.message)
    ]


def _three_layers(bad: float) -> nn.Module:
    """Layers 'a' and 'c' hold a non-finite weight, 'b' is clean."""
    late = _weight(6, 6, 3, 3, seed=2)
    late[0, 0, 1, 1] = bad
    model = nn.Sequential()
    for name, weight in (("a", _with_nonfinite(bad)), ("b", _weight(6, 6, 3, 3)), ("c", late)):
        conv = nn.Conv2d(weight.shape[1], 6, 3, bias=False)
        with torch.no_grad():
            conv.weight.copy_(weight)
        model.add_module(name, conv)
    return model


NONFINITE_CALLS = {
    "sparsity": lambda filters, policy: fs.sparsity(filters, nan_policy=policy),
    "diversity": lambda filters, policy: fs.diversity(filters, nan_policy=policy),
    "orthogonality": lambda filters, policy: fs.orthogonality(filters, nan_policy=policy),
    "measure": lambda filters, policy: fs.measure(filters, nan_policy=policy),
    "analyze": lambda filters, policy: fs.analyze(filters, nan_policy=policy),
}


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("policy", ["propagate", "omit"])
@pytest.mark.parametrize("entry", list(NONFINITE_CALLS))
def test_nonfinite_weights_give_one_warning_naming_the_layers(entry, policy, bad):
    filters = fs.extract_filters(_three_layers(bad))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        NONFINITE_CALLS[entry](filters, policy)
    messages = _nonfinite_warnings(caught)
    assert len(messages) == 1, messages
    assert "layer(s) ['a', 'c']" in messages[0]
    assert f"nan_policy={policy!r}" in messages[0]
    effect = "left out" if policy == "omit" else "NaN"
    assert effect in messages[0]


@pytest.mark.parametrize("entry", list(NONFINITE_CALLS))
def test_finite_weights_give_no_nonfinite_warning(entry):
    filters = fs.extract_filters(nn.Sequential(nn.Conv2d(3, 6, 3), nn.Conv2d(6, 6, 3)))
    for policy in ("propagate", "omit", "raise"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            NONFINITE_CALLS[entry](filters, policy)
        assert _nonfinite_warnings(caught) == []


@pytest.mark.parametrize("entry", list(NONFINITE_CALLS))
def test_raise_policy_raises_without_a_warning(entry):
    filters = fs.extract_filters(_three_layers(math.nan))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=r"\['a', 'c'\]"):
            NONFINITE_CALLS[entry](filters, "raise")
    assert _nonfinite_warnings(caught) == []


def test_nonfinite_warning_points_at_the_caller():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fs.sparsity(_with_nonfinite(math.nan))
        fs.measure(_with_nonfinite(math.nan))
    assert [Path(w.filename).name for w in caught if "non-finite" in str(w.message)] == [
        "test_weights.py",
        "test_weights.py",
    ]


def test_default_policy_is_propagate():
    report = fs.analyze(_net_with_weight(_with_nonfinite(math.nan)))
    assert report.params.nan_policy == "propagate"
    assert math.isnan(report["conv"].sparsity) and math.isnan(report["conv"].orthogonality)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_omit_sparsity_and_orthogonality_leave_out_the_bad_kernels(bad):
    weight = _with_nonfinite(bad)
    kernels = weight.reshape(-1, 1, 3, 3)
    finite_kernels = kernels[torch.isfinite(kernels).flatten(1).all(1)]
    finite_filters = weight[torch.isfinite(weight).flatten(1).all(1)]
    assert fs.sparsity(weight, nan_policy="omit").item() == pytest.approx(
        ref.sparsity(finite_kernels.numpy())
    )
    assert fs.orthogonality(weight, nan_policy="omit").item() == pytest.approx(
        ref.orthogonality(finite_filters.numpy()), abs=1e-6
    )


@pytest.mark.parametrize("entry", ["diversity", "measure"])
def test_omit_diversity_leaves_out_the_bad_kernels(entry):
    weight = _with_nonfinite(math.nan)
    kernels = weight.reshape(-1, 1, 3, 3)
    finite_kernels = kernels[torch.isfinite(kernels).flatten(1).all(1)]
    if entry == "diversity":
        value = fs.diversity(weight, nan_policy="omit").item()
    else:
        value = fs.measure(weight, nan_policy="omit").diversity[0].item()
    assert value == pytest.approx(ref.entropy_paper(finite_kernels.numpy()), abs=1e-6)


def test_omit_on_an_all_nan_layer_does_not_claim_it_is_all_zeros():
    weight = torch.full((4, 3, 3, 3), math.nan)
    with pytest.warns(fs.FilterStatsWarning) as caught:
        fs.diversity(weight, nan_policy="omit")
    assert not any("all zeros" in str(w.message) for w in caught)


# ------------------------------------------------------------ degenerate layers


def test_all_zero_layer_sparsity_one_others_nan_with_warning():
    zero = torch.zeros(4, 3, 3, 3)
    assert fs.sparsity(zero).item() == 1.0
    for metric in ("diversity", "orthogonality"):
        with pytest.warns(fs.FilterStatsWarning, match="all zeros"):
            assert math.isnan(getattr(fs, metric)(zero))
    with pytest.warns(fs.FilterStatsWarning, match="'conv' is all zeros"):
        report = fs.analyze(_net_with_weight(zero))
    assert report["conv"].sparsity == 1.0 and report["conv"].n_nonsparse == 0


def test_single_filter_orthogonality_nan_with_warning_naming_the_layer():
    weight = _weight(1, 4, 3, 3)
    assert fs.sparsity(weight).item() == pytest.approx(ref.sparsity(weight.numpy()))
    assert fs.diversity(weight).item() == pytest.approx(ref.entropy_paper(weight.numpy()))
    with pytest.warns(fs.FilterStatsWarning, match="'conv' has a single output filter"):
        report = fs.analyze(_net_with_weight(weight))
    assert math.isnan(report["conv"].orthogonality)


def test_single_kernel_layer_diversity_nan_without_crash():
    weight = _weight(1, 1, 3, 3)
    with pytest.warns(fs.FilterStatsWarning):
        metrics = fs.measure(weight)
    assert metrics.sparsity[0].item() == 0.0
    assert math.isnan(metrics.diversity[0]) and math.isnan(metrics.orthogonality[0])


@pytest.mark.parametrize(
    "shape", [(8, 1, 3, 3), (8, 4, 1, 1), (8, 4, 1, 3), (8, 4, 3, 1), (8, 4, 5, 3), (6, 2, 3)]
)
@pytest.mark.parametrize("metric", METRICS)
def test_odd_shapes_match_the_float64_reference(metric, shape):
    weight = _weight(*shape)
    value = getattr(fs, metric)(weight).item()
    expected = _reference(metric, weight)
    assert value == pytest.approx(expected, abs=1e-6)
    if metric == "diversity":  # in [0, log10(k)]
        assert -1e-12 <= value <= math.log10(math.prod(shape[2:])) + 1e-9


@pytest.mark.parametrize("shape", [(0, 3, 3, 3), (4, 0, 3, 3)])
def test_zero_size_weight_is_a_clear_error(shape):
    with pytest.raises(ValueError, match="filters"):
        fs.sparsity(torch.zeros(shape))


def test_extract_selects_non_square_and_1x1_kernels_on_request():
    model = nn.Sequential(nn.Conv2d(3, 4, (1, 3)), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3))
    chosen = fs.extract_filters(model, kernel_size=None)
    assert [layer.kernel_size for layer in chosen] == [(1, 3), (1, 1), (3, 3)]
    default = fs.extract_filters(model)
    assert default.names == ("2",)
    assert {s.name: s.reason for s in default.skipped} == {
        "0": "kernel size (1, 3) is not (3, 3)",
        "1": "kernel size (1, 1) is not (3, 3)",
    }


# --------------------------------------------------------------------- dtypes


@pytest.mark.parametrize(
    ("dtype", "tolerance"),
    [(torch.float16, 1e-5), (torch.bfloat16, 1e-5), (torch.float64, 1e-9)],
)
@pytest.mark.parametrize("metric", METRICS)
def test_dtypes_match_the_reference_on_the_same_values(metric, dtype, tolerance):
    weight = _weight(16, 8, 3, 3, dtype=dtype)
    value = getattr(fs, metric)(weight)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(_reference(metric, weight), abs=tolerance)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_analyze_a_model_in_each_dtype(dtype):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)).to(dtype)
    report = fs.analyze(model)
    for row in report.measured:
        weight = model[int(row.layer)].weight
        assert row.diversity == pytest.approx(_reference("diversity", weight), abs=1e-5)
    assert all(p.dtype == dtype for p in model.parameters())


# -------------------------------------------------------------------- layouts


@pytest.mark.parametrize("metric", METRICS)
def test_non_contiguous_and_channels_last_equal_contiguous(metric):
    weight = _weight(8, 6, 3, 3)
    transposed_view = weight.transpose(0, 1).contiguous().transpose(0, 1)
    channels_last = weight.contiguous(memory_format=torch.channels_last)
    strided = _weight(8, 12, 3, 3)[:, ::2]
    assert not transposed_view.is_contiguous() and not channels_last.is_contiguous()
    expected = getattr(fs, metric)(weight)
    torch.testing.assert_close(getattr(fs, metric)(transposed_view), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(getattr(fs, metric)(channels_last), expected, rtol=0, atol=1e-12)
    assert getattr(fs, metric)(strided).item() == pytest.approx(
        _reference(metric, strided), abs=1e-6
    )


def test_channels_last_model_is_read_in_place():
    model = nn.Sequential(nn.Conv2d(3, 8, 3)).to(memory_format=torch.channels_last)
    layer = fs.extract_filters(model)[0]
    assert layer.weight.data_ptr() == model[0].weight.data_ptr()  # a view, no copy
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------- requires_grad


@pytest.mark.parametrize("entry", [*METRICS, "measure"])
def test_weights_requiring_grad_build_no_graph(entry):
    weight = _weight(8, 4, 3, 3).requires_grad_()
    result = getattr(fs, entry)(weight)
    tensors = (
        [result.sparsity, result.diversity, result.orthogonality]
        if entry == "measure"
        else [result]
    )
    for value in tensors:
        assert value.grad_fn is None and not value.requires_grad
    assert weight.grad is None


def test_extracted_weights_are_detached():
    model = nn.Sequential(nn.Conv2d(3, 8, 3))
    layer = fs.extract_filters(model)[0]
    assert not layer.weight.requires_grad and layer.weight.grad_fn is None
    assert model[0].weight.requires_grad


# ------------------------------------------------------------- shared weights


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(4, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 4, 3, padding=1)
        self.second.weight = self.first.weight  # tied weights, separate biases

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class _Reused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Conv2d(4, 4, 3, padding=1)
        self.alias = self.block  # the same module under two names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alias(self.block(x))


@pytest.mark.parametrize(("model_cls", "first", "second"), [(_Shared, "first", "second"),
                                                          (_Reused, "block", "alias")])  # fmt: skip
def test_shared_weights_are_counted_once_and_said_so(model_cls, first, second):
    model = model_cls()
    filters = fs.extract_filters(model)
    assert filters.names == (first,)
    assert filters[first].shared_with == (second,)
    [skip] = filters.skipped
    assert skip.name == second and f"shares its weight with {first!r}" in skip.reason
    report = fs.analyze(model)
    assert [r.layer for r in report.measured] == [first]
    assert report[first].shared_with == second
    assert report[second].status == "skipped"


# ------------------------------------------------------------------ huge layer

MiB = 2**20
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    assert match is not None, f"{key} missing from {_STATUS}"
    return int(match.group(1)) * 1024


def _peak_extra_bytes(metric: str, shape: tuple[int, ...], chunk: int) -> int:
    """Peak resident memory a metric call adds (the kernel's high-water mark, VmHWM).

    The high-water mark is reset to the current resident size just before the call
    (``clear_refs`` 5), so allocations made earlier in the test run do not hide it.
    """
    weight = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    fs.measure(torch.randn(8, 8, *shape[2:]), chunk_bytes=chunk)  # lazy set-up happens here
    options = {} if metric == "sparsity" else {"chunk_bytes": chunk}
    _CLEAR_REFS.write_text("5")
    before = _status_bytes("VmRSS")
    getattr(fs, metric)(weight, **options)
    return _status_bytes("VmHWM") - before


def _can_reset_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return "VmHWM" in _STATUS.read_text()
    except OSError:
        return False


pytestmark_linux = pytest.mark.skipif(
    not _can_reset_peak(), reason="needs Linux /proc/self/clear_refs to reset the peak RSS"
)


@pytestmark_linux
def test_orthogonality_of_many_filters_never_builds_the_whole_gram():
    # 8192 filters: the full float32 Gram matrix alone would be 256 MiB.
    extra = _peak_extra_bytes("orthogonality", (8192, 8, 3, 3), 4 * MiB)
    assert extra < 64 * MiB, f"peak grew by {extra / MiB:.0f} MiB"


@pytestmark_linux
@pytest.mark.parametrize("metric", ["sparsity", "diversity"])
def test_kernel_passes_of_a_large_layer_stay_within_chunks(metric):
    # A 49 MiB float32 layer: a float64 copy of its kernels would add 98 MiB.
    extra = _peak_extra_bytes(metric, (512, 512, 7, 7), 4 * MiB)
    assert extra < 40 * MiB, f"peak grew by {extra / MiB:.0f} MiB"


@pytestmark_linux
def test_orthogonality_of_a_large_layer_stays_within_chunks():
    extra = _peak_extra_bytes("orthogonality", (512, 512, 7, 7), 4 * MiB)
    assert extra < 40 * MiB, f"peak grew by {extra / MiB:.0f} MiB"


@pytest.mark.parametrize("scale", [1e20, 1e-25])
def test_orthogonality_is_scale_invariant_at_extreme_float32_magnitudes(scale):
    weight = _weight(8, 4, 3, 3)
    assert fs.orthogonality(weight * scale).item() == pytest.approx(
        fs.orthogonality(weight).item(), abs=1e-5
    )


# ------------------------------------------------------------------- helpers


class _OneConv(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]))
        with torch.no_grad():
            self.conv.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _net_with_weight(weight: torch.Tensor) -> nn.Module:
    return _OneConv(weight)
