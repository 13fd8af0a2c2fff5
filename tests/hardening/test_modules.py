"""Odd modules: meta and lazy weights, quantised, parametrised, wrapped, scripted, conv-free."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.ao.nn.quantized as nnq
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import filterstats as fs
from tests import reference as ref
from tests.conftest import model_fingerprint
from tests.hardening.conftest import small_net

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def _rows(report: fs.FilterReport) -> list[tuple]:
    return [
        (r.layer, r.status, r.reason, r.n_filters, r.sparsity, r.diversity, r.orthogonality)
        for r in report
    ]


def _same_values(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# --------------------------------------------------------------- meta and lazy


def test_meta_device_convs_are_listed_with_a_reason_naming_each_layer():
    with torch.device("meta"):
        model = small_net()
    with pytest.warns(fs.FilterStatsWarning, match=r"no convolution .* 0 \(weights on the meta"):
        filters = fs.extract_filters(model, kernel_size=None)
    assert len(filters) == 0
    assert {s.name: s.reason for s in filters.skipped} == {
        name: "weights on the meta device (not materialised)" for name in ("0", "3", "5")
    }
    with pytest.warns(fs.FilterStatsWarning):
        report = fs.analyze(model)
    assert [(r.layer, r.status) for r in report] == [("0", "skipped"), ("3", "skipped"),
                                                       ("5", "skipped")]  # fmt: skip
    assert all("meta device" in r.reason for r in report)


def test_a_meta_layer_beside_real_ones_is_skipped_alone():
    model = small_net()
    model[3].to("meta")  # a half-materialised model
    filters = fs.extract_filters(model)
    assert filters.names == ("0",)
    assert [(s.name, "meta" in s.reason) for s in filters.skipped] == [("3", True), ("5", False)]


def test_meta_weight_in_a_metric_is_a_clear_error():
    with pytest.raises(ValueError, match="meta device"):
        fs.sparsity(torch.empty(4, 3, 3, 3, device="meta"))


def test_uninitialised_lazy_conv_is_listed_then_measured_after_a_forward():
    model = nn.Sequential(nn.LazyConv2d(8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    before = model_fingerprint(model)
    filters = fs.extract_filters(model)
    assert filters.names == ("2",)
    [skip] = filters.skipped
    assert (skip.name, skip.module_type) == ("0", "LazyConv2d")
    assert "uninitialised lazy module" in skip.reason and "forward" in skip.reason
    report = fs.analyze(model)
    assert report["0"].status == "skipped" and report["2"].status == "ok"
    assert model_fingerprint(model) == before
    model(torch.zeros(1, 3, 8, 8))
    assert fs.extract_filters(model).names == ("0", "2")


# ----------------------------------------------------------------- quantised


def _quantized_conv(per_channel: bool) -> nnq.Conv2d:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 3, 3, 3, generator=generator)
    conv = nnq.Conv2d(3, 8, 3)
    if per_channel:
        scales = torch.rand(8, generator=generator, dtype=torch.float64) / 20 + 0.01
        quantized = torch.quantize_per_channel(
            weight, scales, torch.zeros(8, dtype=torch.long), 0, torch.qint8
        )
    else:
        quantized = torch.quantize_per_tensor(weight, 0.05, 0, torch.qint8)
    conv.set_weight_bias(quantized, None)
    return conv


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantised_conv_is_measured_on_its_dequantised_weight(per_channel):
    conv = _quantized_conv(per_channel)
    model = nn.Sequential(conv)
    filters = fs.extract_filters(model)
    assert filters.names == ("0",) and not filters.skipped
    expected = conv.weight().dequantize()
    torch.testing.assert_close(filters[0].weight, expected, rtol=0, atol=0)
    report = fs.analyze(model)
    assert report["0"].diversity == pytest.approx(ref.entropy_paper(expected.numpy()), abs=1e-6)
    assert report["0"].sparsity == pytest.approx(ref.sparsity(expected.numpy()))


def test_converted_eager_quantised_model_keeps_every_conv():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quant = torch.ao.quantization.QuantStub()
            self.conv = nn.Conv2d(3, 8, 3)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(8, 8, 3)
            self.dequant = torch.ao.quantization.DeQuantStub()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.dequant(self.conv2(self.relu(self.conv(self.quant(x)))))

    torch.manual_seed(0)
    model = Net().eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig("fbgemm")
    prepared = torch.ao.quantization.prepare(model)
    prepared(torch.randn(4, 3, 8, 8))
    converted = torch.ao.quantization.convert(prepared)
    fused = torch.ao.quantization.fuse_modules(Net().eval(), [["conv", "relu"]])
    fused.qconfig = model.qconfig
    prepared_fused = torch.ao.quantization.prepare(fused)
    prepared_fused(torch.randn(4, 3, 8, 8))
    converted_fused = torch.ao.quantization.convert(prepared_fused)
    for quantized in (converted, converted_fused):
        filters = fs.extract_filters(quantized)
        assert filters.names == ("conv", "conv2"), [type(m) for m in quantized.modules()]
        assert not filters.skipped
        for layer in filters:
            assert layer.weight.dtype == torch.float32
            module = getattr(quantized, layer.name)
            torch.testing.assert_close(layer.weight, module.weight().dequantize())


# ----------------------------------------------------------- parametrisations


class _Double(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2 * weight


def _parametrised(kind: str) -> nn.Module:
    model = small_net()
    if kind == "parametrize":
        parametrize.register_parametrization(model[0], "weight", _Double())
        parametrize.register_parametrization(model[3], "weight", _Double())
    elif kind == "weight_norm":
        parametrizations.weight_norm(model[0])
        parametrizations.weight_norm(model[3])
    elif kind == "spectral_norm":
        parametrizations.spectral_norm(model[0])
        parametrizations.spectral_norm(model[3])
    elif kind == "old_weight_norm":
        nn.utils.weight_norm(model[0])
        nn.utils.weight_norm(model[3])
    elif kind == "old_spectral_norm":
        nn.utils.spectral_norm(model[0])
        nn.utils.spectral_norm(model[3])
    return model.train()


def _effective(model: nn.Module, name: str) -> torch.Tensor:
    """What forward convolves with, computed in eval mode (no power iteration)."""
    module = model[int(name)]
    was = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            if hasattr(module, "weight_orig"):  # old spectral norm: u, v as stored
                hook = next(h for h in module._forward_pre_hooks.values()
                            if type(h).__name__ == "SpectralNorm")  # fmt: skip
                return hook.compute_weight(module, do_power_iteration=False).clone()
            if hasattr(module, "weight_g"):  # old weight norm
                return torch._weight_norm(module.weight_v, module.weight_g, 0).clone()
            return module.weight.detach().clone()
    finally:
        for m, training in was:
            m.training = training


@pytest.mark.parametrize(
    "kind",
    ["parametrize", "weight_norm", "spectral_norm", "old_weight_norm", "old_spectral_norm"],
)
def test_parametrised_convs_give_their_effective_weight_and_stay_untouched(kind):
    model = _parametrised(kind)
    before = model_fingerprint(model)
    filters = fs.extract_filters(model)
    assert filters.names == ("0", "3")
    for layer in filters:
        torch.testing.assert_close(layer.weight, _effective(model, layer.name))
    report = fs.analyze(model)
    for row in report.measured:
        expected = ref.entropy_paper(_effective(model, row.layer).numpy())
        assert row.diversity == pytest.approx(expected, abs=1e-6)
    assert model_fingerprint(model) == before  # no power iteration ran, still training


# ------------------------------------------------------------------- wrappers


def _wrapped(kind: str, model: nn.Module) -> nn.Module:
    if kind == "DataParallel":
        return nn.DataParallel(model)
    if kind == "compile":
        return torch.compile(model)
    if kind == "DataParallel(compile)":
        return nn.DataParallel(torch.compile(model))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["DataParallel", "compile", "DataParallel(compile)"])
def test_wrappers_give_the_same_rows_as_the_plain_model(kind):
    plain = small_net()
    wrapped = _wrapped(kind, small_net())
    plain_filters = fs.extract_filters(plain, kernel_size=None)
    wrapped_filters = fs.extract_filters(wrapped, kernel_size=None)
    assert wrapped_filters.names == plain_filters.names == ("0", "3", "5")
    for a, b in zip(plain_filters, wrapped_filters):
        assert torch.equal(a.weight, b.weight) and a.conv_depth == b.conv_depth
    wrapped_rows, plain_rows = _rows(fs.analyze(wrapped)), _rows(fs.analyze(plain))
    assert len(wrapped_rows) == len(plain_rows) == 3  # two measured, the 1x1 skipped
    for x, y in zip(wrapped_rows, plain_rows):
        assert x[:4] == y[:4] and all(_same_values(p, q) for p, q in zip(x[4:], y[4:]))


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_torchscript_models_give_the_same_filters(kind):
    plain = small_net().eval()
    scripted = (
        torch.jit.script(small_net().eval())
        if kind == "script"
        else torch.jit.trace(small_net().eval(), torch.zeros(1, 3, 8, 8))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", fs.FilterStatsWarning)  # depth from the graph
        filters = fs.extract_filters(scripted, kernel_size=None)
        report = fs.analyze(scripted)
    assert filters.depth_method == "torchscript"
    assert filters.names == ("0", "3", "5")
    assert [layer.module_type for layer in filters] == ["Conv2d"] * 3
    for layer, module in zip(filters, (plain[0], plain[3], plain[5])):
        assert torch.equal(layer.weight, module.weight.detach())
    plain_rows = {r.layer: r for r in fs.analyze(plain).measured}
    for row in report.measured:
        assert row.diversity == plain_rows[row.layer].diversity
        assert row.sparsity == plain_rows[row.layer].sparsity


# ------------------------------------------------------------------- no conv


@pytest.mark.parametrize(
    "model",
    [nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Sequential(), nn.Identity()],
    ids=["mlp", "empty", "identity"],
)
def test_model_without_convs_gives_an_empty_result_with_a_warning(model):
    with pytest.warns(fs.FilterStatsWarning, match="no convolution"):
        filters = fs.extract_filters(model)
    assert len(filters) == 0 and filters.skipped == ()
    with pytest.warns(fs.FilterStatsWarning, match="no convolution"):
        report = fs.analyze(model)
    assert len(report) == 0
    assert "0 layers" in repr(report)
    assert fs.measure(filters).names == ()
    assert fs.sparsity(filters).shape == (0,)


def test_state_dict_without_conv_weights_gives_an_empty_result_with_a_warning():
    state = nn.Sequential(nn.Linear(4, 4)).state_dict()
    with pytest.warns(fs.FilterStatsWarning, match="no convolution"):
        report = fs.analyze(state)
    assert len(report) == 0
