from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

import filterstats as fs
from tests.conftest import model_fingerprint


class Block(nn.Module):
    """Residual block: the 1x1 shortcut runs parallel to conv1 (same conv depth)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv1(x)))) + self.shortcut(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = Block(8, 16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 8, 3, padding=1, groups=4)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.grouped(self.depthwise(self.block(self.stem(x))))
        return self.head(x.mean((2, 3)))


def count_conv_modules(model: nn.Module) -> int:
    return sum(1 for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, _ConvNd))


def test_finds_every_conv_and_accounts_for_the_rest():
    net = Net()
    filters = fs.extract_filters(net)
    assert filters.names == ("stem", "block.conv1", "block.conv2", "depthwise", "grouped")
    assert [s.name for s in filters.skipped] == ["block.shortcut"]
    assert "kernel size (1, 1)" in filters.skipped[0].reason
    assert len(filters) + len(filters.skipped) == count_conv_modules(net)
    assert filters["depthwise"].groups == 16
    assert filters["depthwise"].n_filters == 16
    assert filters["grouped"].in_channels == 16
    assert filters["grouped"].weight.shape == (8, 4, 3, 3)
    assert filters.depth_method == "fx"


def test_depth_ranks_follow_the_graph():
    filters = fs.extract_filters(Net(), kernel_size=None)
    depth = {layer.name: layer.conv_depth for layer in filters}
    assert depth["stem"] == 0
    assert depth["block.conv1"] == depth["block.shortcut"] == 1  # parallel convs share depth
    assert depth["block.conv2"] == 2
    assert depth["depthwise"] == 3 and depth["grouped"] == 4
    assert filters["grouped"].conv_depth_norm == 1.0
    assert filters["block.conv2"].conv_depth_norm == pytest.approx(0.5)
    # conv_depth counts every conv, also those not selected by kernel size.
    only_3x3 = fs.extract_filters(Net())
    assert only_3x3["block.conv2"].conv_depth == 2


def test_weights_are_views_not_copies():
    net = Net()
    filters = fs.extract_filters(net)
    assert filters["stem"].weight.data_ptr() == net.stem.weight.data_ptr()
    assert not filters["stem"].weight.requires_grad


def test_model_is_left_untouched():
    net = Net()
    net.train()
    net.block.eval()
    net.stem.weight.requires_grad_(False)
    net.stem.register_forward_hook(lambda *a: None)
    before = model_fingerprint(net)
    fs.extract_filters(net)
    fs.extract_filters(net, depth="forward", example_inputs=torch.randn(1, 3, 8, 8))
    fs.measure(fs.extract_filters(net))
    assert model_fingerprint(net) == before


def test_kernel_size_options():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, (1, 3)), nn.Conv1d(4, 4, 3))
    assert fs.extract_filters(net).names == ("0",)
    # An int means what nn.Conv2d(kernel_size=3) means, (3, 3); 1-D needs a tuple.
    assert fs.extract_filters(net, kernel_size=3).names == ("0",)
    assert fs.extract_filters(net, kernel_size=(3,)).names == ("2",)
    assert fs.extract_filters(net, kernel_size=(1, 3)).names == ("1",)
    assert len(fs.extract_filters(net, kernel_size=None)) == 3
    with pytest.raises(TypeError, match="kernel_size"):
        fs.extract_filters(net, kernel_size="3x3")


def test_int_kernel_size_is_recorded_as_the_command_line_records_it():
    from filterstats.cli._common import kernel_size as cli_kernel_size

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1), nn.Conv3d(4, 4, 3))
    python, cli = fs.analyze(net, kernel_size=3), fs.analyze(net, kernel_size=cli_kernel_size("3"))
    assert python.params == cli.params
    assert python.params.kernel_size == "3x3"
    assert fs.extract_filters(net, kernel_size=3).kernel_size == (3, 3)
    assert [s.reason for s in fs.extract_filters(net, kernel_size=3).skipped] == [
        "kernel size (1, 1) is not (3, 3)",
        "kernel size (3, 3, 3) is not (3, 3)",
    ]
    assert fs.extract_filters(net, kernel_size=(3, 3, 3)).names == ("2",)


def test_conv_kinds_and_orientation_of_transposed():
    net = nn.Sequential(
        nn.Conv1d(2, 4, 3),
        nn.Conv3d(2, 4, 3),
        nn.ConvTranspose2d(6, 4, 3, groups=2),
    )
    filters = fs.extract_filters(net, kernel_size=None, depth="registration")
    transposed = filters["2"]
    assert transposed.transposed and transposed.out_channels == 4 and transposed.in_channels == 6
    assert transposed.weight.shape == (4, 3, 3, 3)
    raw = net[2].weight  # (C_in=6, C_out/groups=2, 3, 3)
    # Output filter j of group g reads input channels of group g.
    assert torch.equal(transposed.weight[3, 1], raw[3 + 1, 1])
    assert torch.equal(transposed.weight[0, 2], raw[2, 0])
    assert filters["0"].kernel_size == (3,) and filters["1"].kernel_size == (3, 3, 3)


def test_subclasses_and_registered_effective_weights():
    class StdConv(nn.Conv2d):
        def forward(self, x):
            return self._conv_forward(x, standardize(self.weight), self.bias)

    def standardize(w):
        return (w - w.mean((1, 2, 3), keepdim=True)) / w.std((1, 2, 3), keepdim=True)

    class NotAConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.kernel = nn.Parameter(torch.randn(4, 4, 3, 3))

        def forward(self, x):
            return torch.nn.functional.conv2d(x, self.kernel * 2)

    net = nn.Sequential(StdConv(3, 4, 3), NotAConv())
    assert fs.extract_filters(net).names == ("0",)
    fs.register_effective_weight(StdConv, lambda m: standardize(m.weight))
    fs.register_effective_weight(NotAConv, lambda m: m.kernel * 2)
    filters = fs.extract_filters(net)
    assert filters.names == ("0", "1")
    x = torch.randn(1, 3, 6, 6)
    expected = torch.nn.functional.conv2d(x, filters["0"].weight, net[0].bias)
    torch.testing.assert_close(net[0](x), expected)
    torch.testing.assert_close(filters["1"].weight, net[1].kernel * 2)


def test_parametrized_weights_are_effective_and_untouched():
    from torch.nn.utils import parametrizations

    net = nn.Sequential(
        parametrizations.spectral_norm(nn.Conv2d(3, 8, 3)),
        parametrizations.weight_norm(nn.Conv2d(8, 8, 3)),
        torch.nn.utils.weight_norm(nn.Conv2d(8, 8, 3)),
    )
    net.train()
    before = model_fingerprint(net)
    filters = fs.extract_filters(net)
    assert model_fingerprint(net) == before  # no power iteration ran
    with torch.no_grad():
        net.eval()
        torch.testing.assert_close(filters["0"].weight, net[0].weight)
        torch.testing.assert_close(filters["1"].weight, net[1].weight)
        g, v = net[2].weight_g, net[2].weight_v
        torch.testing.assert_close(
            filters["2"].weight, g * v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        )
    net.train()
    spectral = torch.linalg.matrix_norm(filters["0"].weight.flatten(1), ord=2)
    assert float(spectral) == pytest.approx(1.0, abs=0.2)


def test_wrappers_are_unwrapped_and_prefixes_stripped():
    net = Net()
    plain = fs.extract_filters(net)
    wrapped = fs.extract_filters(nn.DataParallel(net))
    assert wrapped.names == plain.names
    compiled = fs.extract_filters(torch.compile(net))
    assert compiled.names == plain.names


def test_state_dicts():
    net = Net()
    plain = fs.extract_filters(net)
    state = {"module." + k: v for k, v in net.state_dict().items()}
    from_state = fs.extract_filters({"state_dict": state})
    assert from_state.names == plain.names
    assert from_state.depth_method == "state_dict"
    assert [s.name for s in from_state.skipped] == ["block.shortcut"]
    for a, b in zip(from_state, plain):
        assert torch.equal(a.weight, b.weight)
    with pytest.raises(TypeError, match="`model`"):
        fs.extract_filters([1, 2, 3])


def test_shared_weights_counted_once():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    net = nn.Sequential(conv, nn.ReLU(), conv)
    filters = fs.extract_filters(net)
    assert filters.names == ("0",)
    assert filters["0"].shared_with == ("2",)
    assert "shares its weight" in filters.skipped[0].reason
    other = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))
    other[1].weight = other[0].weight
    tied = fs.extract_filters(other)
    assert tied.names == ("0",) and tied.skipped[0].name == "1"


def test_lazy_and_meta_modules_are_listed_not_dropped():
    net = nn.Sequential(nn.LazyConv2d(4, 3), nn.Conv2d(4, 4, 3))
    with torch.device("meta"):
        meta = nn.Conv2d(4, 4, 3)
    net.append(meta)
    filters = fs.extract_filters(net, depth="registration")
    assert filters.names == ("1",)
    reasons = {s.name: s.reason for s in filters.skipped}
    assert "uninitialised lazy" in reasons["0"] and "meta" in reasons["2"]


def test_no_conv_warns():
    with pytest.warns(fs.FilterStatsWarning, match="no convolution"):
        filters = fs.extract_filters(nn.Linear(3, 3))
    assert len(filters) == 0


def test_untraceable_model_uses_forward_pass_or_registration():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.c = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
                x = self.a(x)
            else:
                x = self.a(-x)
            return self.b(x)

    net = Dynamic()
    with pytest.warns(fs.FilterStatsWarning, match="registration order"):
        fallback = fs.extract_filters(net, kernel_size=None)
    assert fallback.depth_method == "registration"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        traced = fs.extract_filters(net, kernel_size=None, example_inputs=torch.ones(1, 3, 5, 5))
    assert traced.depth_method == "forward"
    assert traced["a"].conv_depth == 0 and traced["b"].conv_depth == 1
    assert "never called in forward" in traced.skipped[0].reason  # c is unused
    assert traced.skipped[0].name == "c"
    assert len(traced) + len(traced.skipped) == 3


def test_torchscript_model():
    net = Net().eval()
    scripted = torch.jit.script(net)
    filters = fs.extract_filters(scripted)
    assert filters.names == fs.extract_filters(net).names
    for a, b in zip(filters, fs.extract_filters(net)):
        assert torch.equal(a.weight, b.weight)


def test_quantized_conv_is_dequantized():
    quantized = pytest.importorskip("torch.ao.nn.quantized")
    try:
        qconv = quantized.Conv2d(4, 8, 3)
    except (RuntimeError, AssertionError) as error:  # no quantized engine on this build
        pytest.skip(str(error))
    net = nn.Sequential(qconv)
    filters = fs.extract_filters(net, depth="registration")
    assert filters.names == ("0",)
    torch.testing.assert_close(filters["0"].weight, qconv.weight().dequantize())


def test_filterset_behaves_like_a_sequence():
    filters = fs.extract_filters(Net())
    assert filters[0].name == "stem" and filters["stem"] is filters[0]
    assert "stem" in filters and "nope" not in filters
    assert len(filters[1:3]) == 2
    with pytest.raises(KeyError, match="no selected layer"):
        filters["nope"]
    assert "FilterSet(Net" in repr(filters)
    assert filters.n_filters == sum(layer.n_filters for layer in filters)


def test_a_weight_skipped_as_unusable_keeps_its_known_shape():
    int8 = torch.randint(-5, 5, (8, 4, 3, 3), dtype=torch.int8)
    report = fs.analyze({"conv.weight": int8, "other.weight": torch.randn(8, 8, 3, 3)})
    (row,) = report.skipped
    assert "without a scale" in row.reason
    assert (row.out_channels, row.in_channels, row.kernel_size) == (8, 4, "3x3")
    assert "conv   tensor  8x4x3x3" in repr(report) and "?x?" not in repr(report)
    meta = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 6, 3, groups=2).to("meta"))
    (row,) = fs.analyze(meta).skipped
    assert (row.out_channels, row.in_channels, row.groups) == (6, 4, 2)
    assert "6x2x3x3 g=2" in repr(fs.analyze(meta))


def test_counts_of_one_are_singular(caplog):
    import logging

    one = fs.analyze(nn.Sequential(nn.Conv2d(3, 4, 3)))
    assert " 1 layer measured, 0 skipped" in repr(one)
    assert "Sequential: 1 layer, " in repr(fs.extract_filters(nn.Sequential(nn.Conv2d(3, 4, 3))))
    two = fs.analyze(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)))
    assert " 2 layers measured" in repr(two)
    with caplog.at_level(logging.INFO, logger="filterstats"):
        fs.compare(one, one, n_boot=10)
    assert "layers matched by name (1 pair)" in caplog.text
