"""The initialisation baseline: every metric against the architecture re-initialised.

Checked against a plain loop written here (re-initialise by hand, numpy mean and std),
on a fresh model (inside the baseline), on the shipped trained demo models (outside it,
in the direction their recorded metrics show), for side effects on the user's model and
the global random state, and through exports, printing, HTML and the command line.
"""

from __future__ import annotations

import copy
import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import filterstats as fs
from filterstats.cli import main as cli_main
from filterstats.demo import DemoNet

SEEDS = 6
METRICS = (
    "sparsity", "diversity", "diversity_clean", "entropy_raw", "orthogonality",
    "group_orthogonality", "freq_dc", "freq_low", "freq_high",
)  # fmt: skip


class Scale(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2.0 * weight


class MixedNet(nn.Module):
    """Plain, grouped, depthwise and transposed 3x3 convs, a 1x1, a tied pair, and two
    convolutions that cannot be re-initialised (no reset_parameters; a parametrised
    weight that reset_parameters does not reach)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.point = nn.Conv2d(16, 16, 1)
        self.grouped = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.tied_a = nn.Conv2d(32, 32, 3, padding=1)
        self.tied_b = nn.Conv2d(32, 32, 3, padding=1)
        self.tied_b.weight = self.tied_a.weight
        self.frozen = nn.Conv2d(32, 32, 3, padding=1)
        self.frozen.reset_parameters = None  # type: ignore[method-assign,assignment]
        self.scaled = nn.Conv2d(32, 24, 3, padding=1)
        parametrize.register_parametrization(self.scaled, "weight", Scale())
        self.up = nn.ConvTranspose2d(24, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.point(torch.relu(self.stem(x))))
        x = torch.relu(self.depthwise(torch.relu(self.grouped(x))))
        x = torch.relu(self.tied_b(torch.relu(self.tied_a(x))))
        return self.up(torch.relu(self.scaled(torch.relu(self.frozen(x)))))


NOT_RESET = {"frozen", "scaled"}


@pytest.fixture(scope="module")
def mixed() -> MixedNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return MixedNet().eval()


def _reference(model: nn.Module, seeds, layers) -> dict[tuple[str, str], tuple[float, float]]:
    """Plain loop: copy the model, seed, call reset_parameters of each layer by hand."""
    samples: dict[tuple[str, str], list[float]] = {}
    for seed in seeds:
        twin = copy.deepcopy(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for name in layers:
                twin.get_submodule(name).reset_parameters()
        report = fs.analyze(twin)
        for name in layers:
            for metric in METRICS:
                samples.setdefault((name, metric), []).append(getattr(report[name], metric))
    return {
        key: (float(np.mean(values)), float(np.std(values, ddof=1)))
        for key, values in samples.items()
    }


def test_z_equals_a_plain_reference_loop(mixed):
    report = fs.analyze(mixed, baseline="init", baseline_seeds=SEEDS)
    base = report.baseline
    assert base is not None and base.seeds == tuple(range(SEEDS))
    measured = [row.layer for row in report.measured]
    kept = [name for name in measured if name not in NOT_RESET]
    assert base.layers == tuple(kept)
    assert set(base.metrics) == set(METRICS)
    reference = _reference(mixed, range(SEEDS), kept)
    for name in kept:
        for metric in METRICS:
            row = base.get(name, metric)
            mean, std = reference[(name, metric)]
            value = getattr(report[name], metric)
            if math.isnan(value):  # group_orthogonality of one filter per group
                assert math.isnan(row.value) and math.isnan(mean) and math.isnan(row.z)
                continue
            assert row.value == value and row.n_seeds == SEEDS
            assert row.init_mean == pytest.approx(mean, abs=1e-12), (name, metric)
            assert row.init_std == pytest.approx(std, abs=1e-12), (name, metric)
            assert row.diff == pytest.approx(value - mean, abs=1e-12)
            if std > 0:
                assert row.z == pytest.approx((value - mean) / std, abs=1e-12), (name, metric)
            else:  # sparsity: 0 at every initialisation
                assert math.isnan(row.z) if value == mean else math.isinf(row.z)


def test_every_layer_not_in_the_baseline_is_listed_with_its_reason(mixed):
    base = fs.analyze(mixed, baseline="init", baseline_seeds=2).baseline
    reasons = {skip.layer: skip.reason for skip in base.skipped}
    assert set(reasons) == NOT_RESET
    assert "has no reset_parameters" in reasons["frozen"]
    assert "does not change its effective weight" in reasons["scaled"]
    assert "not in the baseline:" in base.table()
    assert "frozen" in base._repr_html_()


def test_a_fresh_model_scores_inside_the_baseline():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)  # not one of the baseline's seeds
        fresh = DemoNet()
    base = fs.analyze(fresh, baseline="init", baseline_seeds=10).baseline
    for metric in ("diversity", "orthogonality", "entropy_raw"):
        z = np.array([base.get(layer, metric).z for layer in base.layers])
        assert np.all(np.abs(z) < 3.5), (metric, z)
    sparsity = [base.get(layer, "sparsity") for layer in base.layers]
    assert all(row.value == 0 and row.diff == 0 and math.isnan(row.z) for row in sparsity)


def test_the_same_seed_is_the_same_initialisation():
    """Seed s re-initialises a DemoNet as ``torch.manual_seed(s); DemoNet()`` does."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        fresh = DemoNet()
    base = fs.analyze(fresh, baseline="init", baseline_seeds=[1, 2]).baseline
    # With seeds (1, 2), m_1 is the model's own value: diff = (m_1 - m_2) / 2 and
    # std = |m_1 - m_2| / sqrt(2), so |z| = 1 / sqrt(2) exactly.
    for row in base:
        if row.init_std > 0:
            assert abs(row.z) == pytest.approx(1 / math.sqrt(2), abs=1e-9), row


@pytest.mark.parametrize("kind", ["normal", "robust"])
def test_trained_demo_models_score_outside_the_baseline(kind):
    """Training lowers entropy and orthogonality below their initial values, for normal
    and robust models alike (the recorded demo metrics of conv2-conv5: entropies
    0.80-0.93 and orthogonalities 0.77-0.88 against 0.95-0.97 at initialisation), and
    makes some kernels sparse (none are at initialisation)."""
    for seed in fs.demo.available_seeds():
        report = fs.analyze(fs.demo.load_model(kind, seed), baseline="init", baseline_seeds=8)
        base = report.baseline
        assert base.layers == ("conv1", "conv2", "conv3", "conv4", "conv5")
        for metric in ("diversity", "orthogonality"):
            rows = [base.get(layer, metric) for layer in base.layers]
            # Every layer after the first far below; the first (16 kernels of one input
            # channel, a wide spread at initialisation: std 0.02) stays within |z| < 4.
            assert all(row.diff < 0 and row.z < -20 for row in rows[1:]), (kind, seed, metric)
            assert abs(rows[0].z) < 4
        sparsity = [base.get(layer, "sparsity") for layer in base.layers]
        assert all(row.init_mean == 0 and row.diff >= 0 for row in sparsity)
        assert any(row.z == math.inf for row in sparsity)


def _state(model: nn.Module) -> dict[str, object]:
    return {
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grad_flags": [p.requires_grad for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
        "devices": [p.device for p in model.parameters()],
        "dtypes": [p.dtype for p in model.parameters()],
    }


def test_the_model_and_the_global_random_state_are_left_as_they_were():
    model = fs.demo.load_model("robust")
    model.train()
    model.conv2.weight.requires_grad_(False)
    calls: list[str] = []
    model.conv3.register_forward_hook(lambda *_: calls.append("hook"))
    before = _state(model)
    torch.manual_seed(77)
    np.random.seed(77)  # noqa: NPY002 - the legacy global state is what must not change
    random.seed(77)
    torch_state, numpy_state, python_state = (
        torch.get_rng_state(), np.random.get_state(), random.getstate(),  # noqa: NPY002
    )  # fmt: skip
    fs.analyze(model, baseline="init", baseline_seeds=3)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after_numpy = np.random.get_state()  # noqa: NPY002
    assert after_numpy[0] == numpy_state[0] and np.array_equal(after_numpy[1], numpy_state[1])
    assert after_numpy[2:] == numpy_state[2:]
    assert random.getstate() == python_state
    after = _state(model)
    assert after.keys() == before.keys()
    for key in before:
        if key == "weights":
            assert all(torch.equal(before[key][k], after[key][k]) for k in before[key])
        else:
            assert before[key] == after[key], key
    assert calls == []  # no forward of the user's model ran its hook for the baseline


def test_results_are_deterministic_and_init_baseline_is_the_same():
    model = fs.demo.load_model("normal")
    first = fs.analyze(model, baseline="init", baseline_seeds=3).baseline
    second = fs.init_baseline(model, seeds=3)
    assert first.rows == second.rows


@pytest.mark.parametrize("what", ["state_dict", "pt_file", "filterset"])
def test_weights_without_an_architecture_are_one_clear_error(what, tmp_path):
    model = fs.demo.load_model("robust")
    held = {
        "state_dict": model.state_dict(),
        "pt_file": tmp_path / "net.pt",
        "filterset": fs.extract_filters(model),
    }[what]
    torch.save(model.state_dict(), tmp_path / "net.pt")
    with pytest.raises(TypeError) as error:
        fs.analyze(held, baseline="init")
    message = str(error.value)
    assert "`model`" in message and "baseline='init'" in message
    assert "load_state_dict" in message and "nn.Module" in message


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"baseline": "random"}, "`baseline` must be one of"),
        ({"baseline": "init", "baseline_seeds": 1}, "at least 2"),
        ({"baseline": "init", "baseline_seeds": [3, 3]}, "two distinct seeds"),
    ],
)
def test_bad_baseline_arguments_name_the_argument(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        fs.analyze(fs.demo.load_model("robust"), **kwargs)


def test_no_baseline_is_the_plain_report():
    report = fs.analyze(fs.demo.load_model("robust"))
    assert report.baseline is None
    assert not any(c.endswith("_init_z") for c in report.columns)
    assert "InitBaseline" not in report.table()


@pytest.mark.parametrize("suffix", [".csv", ".json", ".parquet"])
def test_exports_carry_the_baseline_and_read_back(suffix, tmp_path):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    report = fs.analyze(fs.demo.load_model("robust"), baseline="init", baseline_seeds=3)
    path = tmp_path / f"report{suffix}"
    getattr(report, f"to_{suffix[1:]}")(path)
    back = fs.read_report(path)
    assert back.rows == report.rows  # baseline columns are not read as metrics
    assert back.metrics == report.metrics
    assert back.baseline is not None
    assert back.baseline.rows == report.baseline.rows  # z = +-inf survives JSON's null
    assert back.baseline.seeds == (0, 1, 2)
    assert "diversity_init_z" in report.columns


def test_the_baseline_table_exports_with_its_provenance():
    base = fs.init_baseline(fs.demo.load_model("robust"), seeds=[4, 9])
    text = base.to_csv()
    assert text.startswith("# filterstats ") and '"seeds": [4, 9]' in text
    assert '"n_seeds": 2' in text and '"std_ddof": 1' in text and '"eps": 0.01' in text
    assert json.loads(base.to_json())["filterstats"]["baseline"]["seeds"] == [4, 9]
    pytest.importorskip("pandas")
    frame = base.to_pandas()
    assert frame.attrs["filterstats"]["baseline"]["seeds"] == [4, 9]
    assert len(frame) == 5 * len(base.metrics)


def test_printed_report_with_a_baseline_matches_its_golden_file(golden):
    report = fs.analyze(fs.demo.load_model("robust"), label="robust", baseline="init",
                        baseline_seeds=10)  # fmt: skip
    golden.check("filter_report_baseline", report.table())


def test_html_shows_the_baseline(tmp_path):
    report = fs.analyze(fs.demo.load_model("robust"), baseline="init", baseline_seeds=3)
    assert "InitBaseline" in report._repr_html_()
    text = fs.report(report, tmp_path / "report.html", figures=False).read_text(encoding="utf-8")
    assert "Initialisation baseline" in text and "init_mean" in text
    assert "orthogonality_init_z" not in text  # the layers table keeps to the metrics


def test_cli_baseline_for_a_spec_that_builds_the_model(capsys):
    assert cli_main(["analyze", "demo:robust", "--baseline", "init", "--baseline-seeds", "3"]) == 0
    out = capsys.readouterr().out
    assert "InitBaseline: demo:robust — 5 layers against 3 re-initialisations" in out


def test_cli_baseline_for_a_state_dict_file_is_one_line(tmp_path, capsys):
    torch.save(fs.demo.load_model("robust").state_dict(), tmp_path / "net.pt")
    code = cli_main(["analyze", str(tmp_path / "net.pt"), "--baseline", "init"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--baseline init needs a model spec that builds the network" in err


def test_cli_refuses_fewer_than_two_seeds(capsys):
    with pytest.raises(SystemExit) as stop:
        cli_main(["analyze", "demo:robust", "--baseline", "init", "--baseline-seeds", "1"])
    assert stop.value.code == 2
    assert "at least 2" in capsys.readouterr().err


def test_cli_seeds_without_a_baseline_is_an_error(capsys):
    assert cli_main(["analyze", "demo:robust", "--baseline-seeds", "3"]) == 2
    assert "--baseline-seeds K needs --baseline init" in capsys.readouterr().err


def test_compare_keeps_each_sides_baseline():
    pair = fs.demo.load_pair(0)
    comparison = fs.compare(
        pair.robust, pair.normal, labels=("robust", "normal"), baseline="init", baseline_seeds=3
    )
    for report, label in ((comparison.reports_a[0], "robust"), (comparison.reports_b[0], "normal")):
        assert report.baseline is not None
        assert {row.model for row in report.baseline} == {label}
    # A concatenated report is split into its models, each with its own baseline rows.
    both = fs.FilterReport.concat([comparison.reports_a[0], comparison.reports_b[0]])
    assert both.baseline is not None and len(both.baseline.rows) == 2 * 5 * len(METRICS)
    again = fs.compare(both, pair.normal)
    for report in again.reports_a:
        assert {row.model for row in report.baseline} == set(report.models)


def test_values_give_one_field_per_layer():
    base = fs.init_baseline(fs.demo.load_model("robust"), seeds=3)
    z = base.values("orthogonality")
    assert z == [base.get(layer, "orthogonality").z for layer in base.layers]
    assert base.values("diversity", "diff") == [
        base.get(layer, "diversity").diff for layer in base.layers
    ]
    with pytest.raises(KeyError, match="unknown field"):
        base.values("diversity", "mean")
    with pytest.raises(KeyError, match="no metric"):
        base.values("frequency")


def test_a_wrapped_model_and_a_device_give_the_same_baseline():
    model = fs.demo.load_model("robust")
    plain = fs.init_baseline(model, seeds=3)
    wrapped = fs.init_baseline(nn.DataParallel(model), seeds=3, device="cpu", label="DemoNet")
    assert wrapped.layers == plain.layers
    for a, b in zip(plain, wrapped, strict=True):
        assert (a.layer, a.metric) == (b.layer, b.metric)
        assert a.init_mean == pytest.approx(b.init_mean, abs=1e-12)
        assert a.z == pytest.approx(b.z, abs=1e-9, nan_ok=True)
