"""TorchScript models (traced, scripted; in memory, as files, loaded): the eager model's rows.

Forward hooks do not run on TorchScript submodules and traced submodules keep no
``groups``/``stride``/``transposed`` attributes: depth and these fields come from the
TorchScript graph, and must equal what the eager module gives (fx graph, attributes).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import filterstats as fs
from tests.conftest import model_fingerprint

X = torch.zeros(1, 3, 16, 16)


class Block(nn.Module):
    """Residual block: the 1x1 shortcut runs parallel to conv1."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, groups=2)
        self.bn = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.shortcut = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv1(x)))) + self.shortcut(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, stride=2)
        self.block = Block(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, groups=2)
        self.unused = nn.Conv2d(8, 8, 3, groups=8)  # registered, never called
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(self.grouped(self.block(self.stem(x))))
        return self.head(x.mean((2, 3)))


def _issue_net() -> nn.Module:
    """The model of the report: a groups=4 and a depthwise convolution."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Conv2d(8, 4, 1),
    ).eval()


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.* are deprecated
        return function(*args, **kwargs)


def _torchscript(net: nn.Module, kind: str, where: str, tmp_path: Path):
    """The TorchScript form of ``net``: in memory, a file path, or ``torch.jit.load``."""
    compiled = _quiet(torch.jit.trace, net, X) if kind == "trace" else _quiet(torch.jit.script, net)
    if where == "memory":
        return compiled
    file = tmp_path / f"{kind}.pt"
    _quiet(torch.jit.save, compiled, str(file))
    return str(file) if where == "file" else _quiet(torch.jit.load, str(file))


def _fields(filters: fs.FilterSet) -> list[tuple]:
    return [
        (layer.name, layer.module_type, layer.depth, layer.conv_depth, layer.conv_depth_norm, layer.groups, layer.stride,
         layer.transposed, layer.in_channels, layer.out_channels, layer.kernel_size, layer.shared_with)
        for layer in filters
    ]  # fmt: skip


def _extract(model, **kwargs) -> fs.FilterSet:
    with warnings.catch_warnings():
        warnings.simplefilter("error", fs.FilterStatsWarning)  # no registration-order fallback
        return _quiet(fs.extract_filters, model, kernel_size=None, **kwargs)


@pytest.mark.parametrize("inputs", [None, X], ids=["no_inputs", "example_inputs"])
@pytest.mark.parametrize("where", ["memory", "file", "loaded"])
@pytest.mark.parametrize("kind", ["trace", "script"])
def test_same_rows_as_the_eager_module(kind, where, inputs, tmp_path):
    net = Net().eval()
    eager = fs.extract_filters(net, kernel_size=None)
    assert eager.depth_method == "fx"
    model = _torchscript(net, kind, where, tmp_path)
    before = model_fingerprint(model) if isinstance(model, nn.Module) else None
    filters = _extract(model, example_inputs=inputs)
    assert filters.depth_method == "torchscript"
    assert _fields(filters) == _fields(eager)
    for ours, theirs in zip(filters, eager):
        assert torch.equal(ours.weight, theirs.weight)
    assert [(s.name, s.kernel_size) for s in filters.skipped] == [
        (s.name, s.kernel_size) for s in eager.skipped
    ]
    assert filters.order == eager.order
    unused = next(s for s in filters.skipped if s.name == "unused")
    assert unused.reason.startswith("never called in forward")
    if before is not None:
        assert model_fingerprint(model) == before


def test_the_values_the_eager_module_has():
    """The eager reference itself, written out: a wrong reference cannot pass."""
    eager = fs.extract_filters(Net().eval(), kernel_size=None)
    groups = {layer.name: layer.groups for layer in eager}
    assert groups == {
        "stem": 1, "block.conv1": 2, "block.conv2": 8, "block.shortcut": 1, "grouped": 4, "up": 2,
    }  # fmt: skip
    depth = {layer.name: layer.depth for layer in eager}
    # stem 1; conv1 2 | shortcut 2; bn 3, relu 4, conv2 5; add 6; grouped 7; up 8.
    assert depth == {
        "stem": 1, "block.conv1": 2, "block.shortcut": 2, "block.conv2": 5, "grouped": 7, "up": 8,
    }  # fmt: skip
    assert eager["stem"].stride == (2, 2) and eager["up"].transposed
    assert eager["up"].weight.shape == (4, 4, 3, 3)  # (C_out, C_in / groups, k, k)


@pytest.mark.parametrize("where", ["memory", "file", "loaded"])
@pytest.mark.parametrize("kind", ["trace", "script"])
def test_the_reported_model_is_measured_with_its_groups(kind, where, tmp_path):
    net = _issue_net()
    model = _torchscript(net, kind, where, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fs.FilterStatsWarning)
        report = _quiet(fs.analyze, model, example_inputs=X)
    expected = fs.analyze(net)
    assert [row.layer for row in report.measured] == ["0", "2", "3"]
    assert [row.layer for row in report.measured] == [row.layer for row in expected.measured]
    assert [s.layer for s in report.skipped] == ["4"]  # the 1x1, for its kernel size
    assert "never called" not in report.skipped[0].reason
    filters = _extract(model)
    assert [layer.groups for layer in filters] == [1, 4, 8, 1]
    for ours, theirs in zip(report.measured, expected.measured):
        assert ours.conv_depth == theirs.conv_depth and ours.groups == theirs.groups
        assert ours.diversity == theirs.diversity and ours.sparsity == theirs.sparsity


@pytest.mark.parametrize("kind", ["trace", "script"])
def test_depth_forward_on_torchscript_reads_the_graph(kind, tmp_path):
    net = _issue_net()
    model = _torchscript(net, kind, "memory", tmp_path)
    filters = _extract(model, depth="forward", example_inputs=X)
    assert filters.depth_method == "torchscript"
    assert [layer.depth for layer in filters] == [
        layer.depth for layer in fs.extract_filters(net, kernel_size=None)
    ]
    registration = _quiet(fs.extract_filters, model, kernel_size=None, depth="registration")
    assert registration.depth_method == "registration"
    assert [layer.groups for layer in registration] == [1, 4, 8, 1]


class Twice(nn.Module):
    """One convolution called twice: one row, the deeper call's depth."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, groups=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.conv(x)))


@pytest.mark.parametrize("kind", ["trace", "script"])
def test_a_module_called_twice(kind, tmp_path):
    net = Twice().eval()
    eager = fs.extract_filters(net, kernel_size=None)
    filters = _extract(_torchscript(net, kind, "loaded", tmp_path))
    assert _fields(filters) == _fields(eager)
    assert filters["conv"].depth == 3 and filters["conv"].groups == 3


class Forked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, groups=1)
        self.b = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        future = torch.jit.fork(self.a, x)
        return self.b(x) + torch.jit.wait(future)


def test_a_graph_that_hides_calls_falls_back_with_a_warning():
    """``fork`` hides which convolutions run: registration order, never "never called"."""
    scripted = _quiet(torch.jit.script, Forked().eval())
    with pytest.warns(fs.FilterStatsWarning, match="registration order"):
        filters = _quiet(fs.extract_filters, scripted, kernel_size=None, example_inputs=X)
    assert filters.depth_method == "registration"
    assert filters.names == ("a", "b") and not filters.skipped


def test_torchscript_submodule_of_an_eager_model_is_not_never_called():
    """fx and forward hooks do not see into a traced submodule: registration order."""
    inner = _quiet(torch.jit.trace, _issue_net(), X)
    outer = nn.Sequential(inner, nn.ReLU())
    for inputs in (None, X):
        with pytest.warns(fs.FilterStatsWarning, match="inside TorchScript submodules"):
            filters = _quiet(fs.extract_filters, outer, kernel_size=None, example_inputs=inputs)
        assert filters.depth_method == "registration"
        assert filters.names == ("0.0", "0.2", "0.3", "0.4") and not filters.skipped
        assert [layer.groups for layer in filters] == [1, 4, 8, 1]


class _NoGraph(nn.Module):
    """A traced conv that forward never called has no graph: groups unknown, not 1."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Conv2d(3, 4, 3)
        self.spare = nn.Conv2d(4, 4, 3, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_groups_of_an_uncalled_traced_conv_are_unknown_never_wrong():
    traced = _quiet(torch.jit.trace, _NoGraph().eval(), X)
    filters = _quiet(fs.extract_filters, traced, kernel_size=None, depth="registration")
    assert filters["used"].groups == 1
    assert filters["spare"].groups is None  # not the default 1
    assert filters["spare"].in_channels == 2  # one group's, as for state dicts


class PadsItself(nn.Module):
    """An explicit ``F.pad`` before a conv is a node of its own (unlike ``padding_mode``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"))


@pytest.mark.parametrize("where", ["memory", "loaded"])
@pytest.mark.parametrize("kind", ["trace", "script"])
def test_padding_modes_count_as_the_conv_node(kind, where, tmp_path):
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding="same", groups=2),
        PadsItself(),
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular", groups=4),
    ).eval()
    eager = fs.extract_filters(net, kernel_size=None)
    assert [layer.depth for layer in eager] == [1, 3, 5, 6]  # the explicit pad is node 4
    filters = _extract(_torchscript(net, kind, where, tmp_path))
    assert _fields(filters) == _fields(eager)


def test_an_unlisted_convolution_op_still_counts_as_called(monkeypatch):
    """An op the graph reader does not know (here: conv2d, unlisted) still marks its
    module as called, with depth but no groups read from it."""
    from filterstats import _torchscript

    kinds = dict(_torchscript._CONV_KINDS)
    kinds.pop("aten::_convolution")
    monkeypatch.setattr(_torchscript, "_CONV_KINDS", kinds)
    net = _issue_net()
    traced = _quiet(torch.jit.trace, net, X)
    filters = _extract(traced)
    assert filters.depth_method == "torchscript" and not filters.skipped
    assert [layer.depth for layer in filters] == [
        layer.depth for layer in fs.extract_filters(net, kernel_size=None)
    ]
    assert [layer.groups for layer in filters] == [None] * 4  # unknown, not 1
