"""One way in: the same model through every door gives the same layers and numbers.

One small CNN (a 1x1 and a 5x5 conv, a grouped conv, a tied pair) held as a module, a
state dict, a ``.pt`` file, a Lightning-style ``.ckpt``, a DataParallel-prefixed dict,
a ``.safetensors`` file, a TorchScript archive, an ONNX export and a spec string, each
through ``analyze``, ``compare``, ``filter_divergence``, ``scan`` and the command line.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

import filterstats as fs
from filterstats.cli import main as cli_main

METRICS = (
    "sparsity", "diversity", "diversity_clean", "entropy_raw", "orthogonality",
    "freq_dc", "freq_low", "freq_high",
)  # fmt: skip
MEASURED_3X3 = ("stem", "grouped", "tied_a", "head")
SKIPPED_3X3 = {
    ("point", "kernel size (1, 1) is not (3, 3)"),
    ("wide", "kernel size (5, 5) is not (3, 3)"),
    ("tied_b", "shares its weight with 'tied_a' (counted once there)"),
}


class MatrixNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.point = nn.Conv2d(16, 16, 1)
        self.wide = nn.Conv2d(16, 16, 5, padding=2)
        self.grouped = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.tied_a = nn.Conv2d(32, 32, 3, padding=1)
        self.tied_b = nn.Conv2d(32, 32, 3, padding=1)
        self.tied_b.weight = self.tied_a.weight
        self.head = nn.Conv2d(32, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.point(torch.relu(self.stem(x))))
        x = torch.relu(self.grouped(torch.relu(self.wide(x))))
        return self.head(torch.relu(self.tied_b(torch.relu(self.tied_a(x)))))


@pytest.fixture(scope="module")
def model() -> MatrixNet:
    torch.manual_seed(0)
    return MatrixNet().eval()


def _doors(model: MatrixNet, tmp_path) -> dict[str, object]:
    """Every way a user may hold this model."""
    state = model.state_dict()
    torch.save(state, tmp_path / "net.pt")
    lightning = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{key}": value for key, value in state.items()},
        "optimizer_states": [],
    }
    torch.save(lightning, tmp_path / "net.ckpt")
    from safetensors.torch import save_file

    # safetensors refuses shared storage: the tied weight is written twice (equal values).
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()},
              str(tmp_path / "net.safetensors"))  # fmt: skip
    torch.jit.script(model).save(str(tmp_path / "net.ts.pt"))
    doors: dict[str, object] = {
        "module": model,
        "state_dict": state,
        "dataparallel_dict": {f"module.{key}": value for key, value in state.items()},
        "checkpoint_dict": {"state_dict": state, "epoch": 1},
        "pt_file": tmp_path / "net.pt",
        "spec_string": str(tmp_path / "net.pt"),
        "lightning_ckpt": str(tmp_path / "net.ckpt"),
        "safetensors": str(tmp_path / "net.safetensors"),
        "torchscript": str(tmp_path / "net.ts.pt"),
    }
    if _has_onnx():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn(1, 3, 12, 12),), str(tmp_path / "net.onnx"),
                              dynamo=False)  # fmt: skip
        doors["onnx"] = str(tmp_path / "net.onnx")
    return doors


def _has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def doors(model, tmp_path_factory) -> dict[str, object]:
    return _doors(model, tmp_path_factory.mktemp("doors"))


def _values(report: fs.FilterReport) -> dict[str, dict[str, float]]:
    return {row.layer: {m: getattr(row, m) for m in METRICS} for row in report.measured}


def _assert_same_values(got: dict, expected: dict, door: str) -> None:
    assert set(got) == set(expected), door
    for layer, values in expected.items():
        for metric, value in values.items():
            assert math.isclose(got[layer][metric], value, rel_tol=1e-6, abs_tol=1e-6), (
                door, layer, metric, got[layer][metric], value,
            )  # fmt: skip


#: Doors that keep no layer order (safetensors sorts its keys): depths are unknown there.
UNORDERED = {"safetensors"}

DOOR_NAMES = [
    "module", "state_dict", "dataparallel_dict", "checkpoint_dict", "pt_file", "spec_string",
    "lightning_ckpt", "safetensors", "torchscript", "onnx",
]  # fmt: skip


@pytest.mark.filterwarnings("ignore::filterstats.FilterStatsWarning")  # TorchScript: no fx
@pytest.mark.parametrize("door", DOOR_NAMES)
def test_analyze_gives_the_same_layers_and_values(model, doors, door):
    if door not in doors:
        pytest.skip("onnx is not installed")
    reference = fs.analyze(model)
    report = fs.analyze(doors[door])
    assert report.params.kernel_size == "3x3"
    assert {(row.layer, row.reason) for row in report.skipped} == SKIPPED_3X3
    _assert_same_values(_values(report), _values(reference), door)
    depth = {row.layer: row.conv_depth_norm for row in report.measured}
    if door in UNORDERED:
        assert report.params.depth_method == "none"
        assert all(math.isnan(value) for value in depth.values())
        return
    assert tuple(row.layer for row in report.measured) == MEASURED_3X3
    # The depth ranks agree too: a sequential net has one conv per depth in every door.
    assert depth == pytest.approx({row.layer: row.conv_depth_norm for row in reference.measured})


@pytest.mark.filterwarnings("ignore::filterstats.FilterStatsWarning")
@pytest.mark.parametrize("door", DOOR_NAMES)
def test_every_kernel_size_is_recorded_as_all(model, doors, door):
    if door not in doors:
        pytest.skip("onnx is not installed")
    report = fs.analyze(doors[door], kernel_size=None)
    assert report.params.kernel_size == "all"
    assert {row.layer for row in report.measured} == {*MEASURED_3X3, "point", "wide"}
    assert [(row.layer, row.reason) for row in report.skipped] == [
        ("tied_b", "shares its weight with 'tied_a' (counted once there)")
    ]
    _assert_same_values(_values(report), _values(fs.analyze(model, kernel_size=None)), door)


@pytest.mark.filterwarnings("ignore::filterstats.FilterStatsWarning")
@pytest.mark.parametrize("door", DOOR_NAMES)
def test_compare_matches_by_name_and_finds_no_difference(model, doors, door):
    if door not in doors:
        pytest.skip("onnx is not installed")
    comparison = fs.compare(doors[door], model, labels=("door", "module"))
    assert comparison.match == "name"
    assert not comparison.unmatched
    assert {row.unit for row in comparison.matched} == set(MEASURED_3X3)
    for row in comparison.matched:
        assert abs(row.difference) < 1e-6, (door, row)


@pytest.mark.filterwarnings("ignore::filterstats.FilterStatsWarning")
@pytest.mark.parametrize("door", DOOR_NAMES)
def test_filter_divergence_of_the_same_model_is_zero(model, doors, door):
    if door not in doors:
        pytest.skip("onnx is not installed")
    result = fs.filter_divergence(doors[door], model, depth_bins=2)
    for row in result if door not in UNORDERED else [result["all"]]:
        assert row.n_a == row.n_b
        if row.n_a:
            assert row.divergence == pytest.approx(0.0, abs=1e-12)


FILE_DOORS = ["spec_string", "lightning_ckpt", "safetensors", "torchscript", "onnx"]


@pytest.mark.filterwarnings("ignore::filterstats.FilterStatsWarning")
@pytest.mark.parametrize("door", FILE_DOORS)
def test_scan_stores_the_same_rows(model, doors, door, tmp_path):
    pytest.importorskip("pyarrow")
    if door not in doors:
        pytest.skip("onnx is not installed")
    summary = fs.scan([doors[door]], tmp_path / "store", workers=1, progress=False)
    assert summary.ok, summary.failed
    frame = fs.open_store(tmp_path / "store")
    measured = frame[frame["status"] == "ok"]
    assert sorted(measured["layer"]) == sorted(MEASURED_3X3)
    skipped = frame[frame["status"] != "ok"]
    assert set(zip(skipped["layer"], skipped["reason"])) == SKIPPED_3X3
    expected = _values(fs.analyze(model))
    got = {row["layer"]: {m: row[m] for m in METRICS} for _, row in measured.iterrows()}
    _assert_same_values(got, expected, door)


@pytest.mark.filterwarnings("ignore::filterstats.FilterStatsWarning")
@pytest.mark.parametrize("door", FILE_DOORS)
def test_command_line_json_gives_the_same_rows(model, doors, door, capsys):
    if door not in doors:
        pytest.skip("onnx is not installed")
    assert cli_main(["analyze", str(doors[door]), "--format", "json", "--quiet"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["filterstats"]["kernel_size"] == "3x3"
    rows = payload["rows"]
    measured = [r for r in rows if r["status"] == "ok"]
    assert sorted(r["layer"] for r in measured) == sorted(MEASURED_3X3)
    assert {(r["layer"], r["reason"]) for r in rows if r["status"] != "ok"} == SKIPPED_3X3
    got = {r["layer"]: {m: r[m] for m in METRICS} for r in measured}
    _assert_same_values(got, _values(fs.analyze(model)), door)


# ----------------------------------------------------------------- selection recorded


def test_a_filterset_of_every_size_is_selected_and_recorded(model):
    every = fs.extract_filters(model, kernel_size=None)
    assert every.kernel_size is None
    narrowed = fs.analyze(every)  # the default selection applies to FilterSets too
    assert narrowed.params.kernel_size == "3x3"
    assert tuple(row.layer for row in narrowed.measured) == MEASURED_3X3
    assert fs.analyze(every, kernel_size=None).params.kernel_size == "all"


def test_a_selected_filterset_keeps_its_narrower_selection(model):
    only_3x3 = fs.extract_filters(model)
    report = fs.analyze(only_3x3, kernel_size=None)
    assert report.params.kernel_size == "3x3"  # what was applied, not what was asked
    assert tuple(row.layer for row in report.measured) == MEASURED_3X3


def test_skipped_layers_keep_what_is_known(model):
    report = fs.analyze(model)
    point = report["point"]
    assert (point.in_channels, point.out_channels, point.groups, point.kernel_size) == (
        16, 16, 1, "1x1",
    )  # fmt: skip
    assert point.conv_depth == 1
    assert math.isnan(point.sparsity)


# ------------------------------------------------------------------ the odd doors


def test_a_bare_convolution_is_a_model_of_one_layer():
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 32, 3)
    report = fs.analyze(conv)
    assert [row.layer for row in report.measured] == [fs.layers.ROOT_NAME]
    assert not report.skipped
    from_state = fs.analyze(conv.state_dict())
    assert [row.layer for row in from_state.measured] == [fs.layers.ROOT_NAME]
    _assert_same_values(_values(from_state), _values(report), "state dict of a conv")
    _assert_same_values(_values(fs.analyze(conv.weight)), _values(report), "weight tensor")


def _quantised_net() -> nn.Module:
    import torch.ao.quantization as tq

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quant = tq.QuantStub()
            self.conv1 = nn.Conv2d(3, 8, 3)
            self.conv2 = nn.Conv2d(8, 8, 3)
            self.dequant = tq.DeQuantStub()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.dequant(self.conv2(torch.relu(self.conv1(self.quant(x)))))

    torch.manual_seed(2)
    net = Net().eval()
    net.qconfig = tq.get_default_qconfig("fbgemm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = tq.prepare(net)
        prepared(torch.randn(8, 3, 12, 12))
        return tq.convert(prepared)


def test_a_quantised_state_dict_is_dequantised_and_measured(tmp_path):
    quantised = _quantised_net()
    from_module = fs.analyze(quantised)
    state = quantised.state_dict()
    assert state["conv1.weight"].is_quantized
    for held in (state, tmp_path / "q.pt"):
        if not isinstance(held, dict):
            torch.save(state, held)
        report = fs.analyze(held)
        assert [row.layer for row in report.measured] == ["conv1", "conv2"]
        _assert_same_values(_values(report), _values(from_module), str(held)[:20])
    expected = fs.analyze({"conv1.weight": state["conv1.weight"].dequantize()})
    assert fs.analyze(state)["conv1"].diversity == pytest.approx(expected["conv1"].diversity)


def test_integer_weights_without_a_scale_are_listed_not_dropped():
    state = {"conv.weight": torch.randint(-8, 8, (4, 3, 3, 3), dtype=torch.int8)}
    with pytest.warns(fs.FilterStatsWarning, match="no convolution"):
        report = fs.analyze(state)
    assert not report.measured
    (row,) = report.skipped
    assert row.layer == "conv"
    assert "torch.int8 weights without a scale" in row.reason


def test_a_torchscript_file_is_recognised_not_called_corrupt(model, doors):
    held = fs.checkpoints.read_checkpoint(doors["torchscript"])
    assert isinstance(held, torch.jit.ScriptModule)
    assert fs.checkpoints.is_torchscript_archive(doors["torchscript"])
    assert not fs.checkpoints.is_torchscript_archive(doors["pt_file"])
    state = fs.load_state_dict(doors["torchscript"])
    torch.testing.assert_close(state["stem.weight"], model.stem.weight.detach())


def test_spec_strings_work_in_every_function_that_takes_a_model(doors):
    spec = doors["spec_string"]
    assert fs.pca_basis(spec).n_filters > 0
    assert fs.filter_divergence(spec, spec)["all"].divergence == pytest.approx(0.0, abs=1e-12)
    pytest.importorskip("matplotlib")
    from filterstats.plotting import plot_filters, plot_rgb_filters

    ax = plot_filters(spec)
    assert len(ax.get_yticklabels()) == len(MEASURED_3X3)
    assert plot_rgb_filters(spec).get_title().startswith("stem")


def test_a_mapping_is_a_state_dict_everywhere(model):
    pytest.importorskip("matplotlib")
    from filterstats.plotting import plot_filters

    state = model.state_dict()
    ax = plot_filters(state)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(MEASURED_3X3)


def test_a_report_is_refused_where_weights_are_needed(model):
    with pytest.raises(TypeError, match="holds metrics, not weights"):
        fs.pca_basis(fs.analyze(model))


# ------------------------------------------------------------- checkpoint unwrapping


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s},
        lambda s: {"model": s, "optimizer": {}},
        lambda s: {"net": s},
        lambda s: {"network": s},
        lambda s: {"ema": s},
        lambda s: {"model_ema": s},
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
        lambda s: {f"_orig_mod.module.{k}": v for k, v in s.items()},
        lambda s: {"pytorch-lightning_version": "2.4", "state_dict": {f"net.{k}": v
                                                                      for k, v in s.items()}},
    ],
    ids=["plain", "state_dict", "model", "net", "network", "ema", "model_ema",
         "state_dict+module", "compile+dataparallel", "lightning"],
)  # fmt: skip
def test_one_unwrapper_for_files_and_dicts(model, wrap, tmp_path):
    state = model.state_dict()
    held = wrap(state)
    path = tmp_path / "held.pt"
    torch.save(held, path)
    expected = list(state)
    assert list(fs.checkpoints.to_state_dict(held)) == expected
    assert list(fs.load_state_dict(path)) == expected
    assert fs.extract_filters(held).names == fs.extract_filters(path).names == MEASURED_3X3


def test_a_plain_model_prefix_is_kept_outside_lightning(model):
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    names = fs.extract_filters(state).names
    assert names == tuple(f"model.{n}" for n in MEASURED_3X3)


def test_wrapped_modules_give_the_same_names(model):
    wrapped = nn.DataParallel(model)
    assert fs.extract_filters(wrapped).names == MEASURED_3X3


# ---------------------------------------------------------------- shared weights


def test_shared_weights_same_storage_or_equal_values():
    torch.manual_seed(3)
    weight = torch.randn(4, 4, 3, 3)
    state = {
        "a.weight": weight,
        "b.weight": weight,  # same storage
        "c.weight": weight.clone(),  # equal values
        "d.weight": weight + 1e-6,  # different
        "e.weight": torch.zeros(4, 4, 3, 3),
        "f.weight": torch.zeros(4, 4, 3, 3),  # equal but constant: two dead layers
    }
    filters = fs.extract_filters(state)
    assert filters.names == ("a", "d", "e", "f")
    assert filters["a"].shared_with == ("b", "c")
    assert {s.name for s in filters.skipped} == {"b", "c"}


def test_a_module_registered_twice_is_shared_once():
    conv = nn.Conv2d(4, 4, 3)
    net = nn.Sequential(conv, nn.ReLU(), conv)
    filters = fs.extract_filters(net)
    assert filters.names == ("0",)
    assert [(s.name, s.reason) for s in filters.skipped] == [
        ("2", "shares its weight with '0' (counted once there)")
    ]
    assert filters.names == fs.extract_filters(net.state_dict()).names


# ---------------------------------------------------------------- initialisation baseline

#: Doors that hold an architecture to re-initialise; every other door holds weights only.
BASELINE_DOORS = {"module", "torchscript"}


@pytest.mark.filterwarnings("ignore::filterstats.FilterStatsWarning")
@pytest.mark.parametrize("door", DOOR_NAMES)
def test_init_baseline_needs_an_architecture(model, doors, door):
    if door not in doors:
        pytest.skip("onnx is not installed")
    if door not in BASELINE_DOORS:
        with pytest.raises(TypeError, match=r"`baseline='init'` re-initialises the archi"):
            fs.analyze(doors[door], baseline="init", baseline_seeds=2)
        return
    report = fs.analyze(doors[door], baseline="init", baseline_seeds=2)
    base = report.baseline
    assert base is not None
    if door == "module":
        assert base.layers == MEASURED_3X3 and not base.skipped
    else:  # TorchScript convolutions keep no reset_parameters: each is listed, none dropped
        assert not base.rows
        assert {s.layer for s in base.skipped} == set(MEASURED_3X3)
        assert all("has no reset_parameters" in s.reason for s in base.skipped)
