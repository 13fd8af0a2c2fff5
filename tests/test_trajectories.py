"""fs.trajectory over saved checkpoints, and compare_trajectories over groups of runs."""

from __future__ import annotations

import math
import random

import pytest
import torch
from scipy import stats

import filterstats as fs
from filterstats.tracking import FilterHistory, HistoryRow, TrackingParams
from filterstats.trajectories import _interval, step_from_name
from tests.test_tracking import TrackNet, train


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("runs/a/epoch=3-step=1200.ckpt", 1200),
        ("ckpt_000300.pt", 300),
        ("model-step_45.safetensors", 45),
        ("STEP7.pt", 7),
        ("epoch=7.ckpt", 7),
        ("run2/weights_10.tar.gz", 10),
    ],
)
def test_step_from_name(name, step):
    assert step_from_name(name) == step


def test_step_from_name_without_an_integer_asks_for_step():
    with pytest.raises(ValueError, match="step="):
        step_from_name("runs/3/final.pt")


def test_trajectory_of_saved_checkpoints_equals_the_tracker(tmp_path):
    torch.manual_seed(0)
    model = TrackNet().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker = fs.FilterTracker(model, every=2)
    paths = []
    for step in range(7):
        train(model, opt, 1)  # one step (the same batch each time: fine here)
        tracker.step(step)
        if step % 2 == 0:
            path = tmp_path / f"ckpt_{step:04d}.pt"
            torch.save(model.state_dict(), path)
            paths.append(path)
    tracked = tracker.history()
    shuffled = [paths[2], paths[0], paths[3], paths[1]]
    run = fs.trajectory([str(p) for p in shuffled])
    assert run.steps == tracked.steps == (0, 2, 4, 6)
    assert run.layers == tracked.layers
    assert run.params.reference_step == 0 and run.params.every == 0
    assert [r.layer for r in run.skipped] == ["point"]
    for a, b in zip(run, tracked):
        assert (a.step, a.layer, a.conv_depth_norm) == (b.step, b.layer, b.conv_depth_norm)
        for name, value in b.metrics.items():
            other = a.metrics[name]
            if a.groups is None and math.isnan(other) and name == "group_orthogonality":
                continue  # a state dict does not know the groups
            assert (math.isnan(value) and math.isnan(other)) or abs(value - other) <= 1e-12, name
    by_module = fs.trajectory([model], step=[9])
    assert by_module.report(9).measured[0].diversity == fs.analyze(model).measured[0].diversity
    assert by_module.rows[0].drift_cosine == 1.0


def test_trajectory_errors(tmp_path):
    net = TrackNet()
    with pytest.raises(ValueError, match="empty"):
        fs.trajectory([])
    with pytest.raises(ValueError, match="step="):
        fs.trajectory([net])
    with pytest.raises(ValueError, match="more than once"):
        fs.trajectory([net, net], step=[1, 1])
    with pytest.raises(ValueError, match="2 values for 1"):
        fs.trajectory([net], step=[1, 2])
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="one architecture"):
        fs.trajectory([net, other], step=[0, 1])


def synthetic_run(values: list[float], label: str = "run") -> FilterHistory:
    """One layer (the first conv depth) whose orthogonality follows ``values``."""
    rows = tuple(
        HistoryRow(step=10 * i, model=label, layer="conv", module_type="Conv2d", conv_depth=0,
                   conv_depth_norm=0.0, out_channels=4, n_filters=4, n_nonsparse=4,
                   metrics={"orthogonality": v, "drift_cosine": 1.0})
        for i, v in enumerate(values)
    )  # fmt: skip
    return FilterHistory(rows, TrackingParams(label=label, n_layers=1))


def test_compare_trajectories_intervals_match_scipy_and_find_the_divergence():
    rng = random.Random(0)
    shift = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    a = [synthetic_run([s + rng.gauss(0, 0.05) for s in shift]) for _ in range(4)]
    b = [synthetic_run([rng.gauss(0, 0.05) for _ in shift]) for _ in range(3)]
    result = fs.compare_trajectories(a, b, metrics=["orthogonality"], labels=("robust", "normal"))
    assert result.diverged[("orthogonality", "first")] == 30
    for row in result.rows:
        k = row["step"] // 10
        xa = [run.rows[k].orthogonality for run in a]
        xb = [run.rows[k].orthogonality for run in b]
        ci = stats.ttest_ind(xa, xb, equal_var=False).confidence_interval(0.95)
        assert row["low"] == pytest.approx(ci.low, abs=1e-12)
        assert row["high"] == pytest.approx(ci.high, abs=1e-12)
        assert row["difference"] == pytest.approx(sum(xa) / 4 - sum(xb) / 3, abs=1e-12)
    assert "diverged from step" in repr(result)
    assert len(result.to_pandas()) == len(shift)
    paired = fs.compare_trajectories(a[:3], b, metrics=["orthogonality"], paired=True)
    for row in paired.rows:
        k = row["step"] // 10
        xa = [run.rows[k].orthogonality for run in a[:3]]
        xb = [run.rows[k].orthogonality for run in b]
        ci = stats.ttest_rel(xa, xb).confidence_interval(0.95)
        assert (row["low"], row["high"]) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_compare_trajectories_a_difference_that_comes_back_has_not_diverged():
    rng = random.Random(1)
    last = [0.1, -0.05, 0.02]  # apart at steps 10 and 20, the same values again at 30
    a = [synthetic_run([rng.gauss(0, 0.01), 1 + rng.gauss(0, 0.01), 1.0, v]) for v in last]
    b = [synthetic_run([rng.gauss(0, 0.01), rng.gauss(0, 0.01), 0.0, v]) for v in last[::-1]]
    result = fs.compare_trajectories(a, b, metrics=["orthogonality"])
    assert result.diverged[("orthogonality", "first")] is None
    same = fs.compare_trajectories(a, a, metrics=["drift_cosine"], paired=True)
    assert same.diverged[("drift_cosine", "first")] is None  # zero-width interval at 0


def test_compare_trajectories_needs_runs_not_layers():
    run = synthetic_run([0.0, 1.0])
    with pytest.raises(ValueError, match="two runs per group"):
        fs.compare_trajectories(run, [run, run])
    with pytest.raises(ValueError, match="paired"):
        fs.compare_trajectories([run, run, run], [run, run], paired=True)
    with pytest.raises(TypeError, match="FilterHistory"):
        fs.compare_trajectories([1, 2], [run, run])  # type: ignore[list-item]


@pytest.mark.parametrize("paired", [False, True])
def test_pointwise_intervals_are_calibrated_on_null_data(paired):
    """Both groups from one distribution: about 5% of the 95% intervals exclude 0."""
    rng = random.Random(2)
    trials, excluded = 4000, 0
    for _ in range(trials):
        a = [rng.gauss(0, 1) for _ in range(3)]
        b = [rng.gauss(0, 1) for _ in range(3)]
        _, low, high = _interval(a, b, 0.95, paired, stats)
        excluded += low > 0 or high < 0
    rate = excluded / trials
    assert 0.035 < rate < 0.065, rate  # binomial sd at 4000 trials: 0.0034


def test_trajectory_with_a_file_resumes_without_measuring_again(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = TrackNet().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    paths = []
    for step in range(4):
        train(model, opt, 1)
        path = tmp_path / f"step={step}.pt"
        torch.save(model.state_dict(), path)
        paths.append(str(path))
    out = tmp_path / "traj.csv"
    first = fs.trajectory(paths[:2], out=out)  # "killed" after two checkpoints
    assert fs.read_history(out).steps == (0, 1)
    import filterstats.trajectories as trajectories

    measured = []
    original = trajectories.measure_snapshot
    monkeypatch.setattr(
        trajectories, "measure_snapshot",
        lambda filters, ref, step, **kw: measured.append(step) or original(filters, ref, step, **kw),
    )  # fmt: skip
    resumed = fs.trajectory(paths, out=out)
    assert measured == [0, 2, 3]  # the reference is read again, step 1 is not measured again
    assert fs.read_history(out).to_records() == resumed.to_records()
    whole = fs.trajectory(paths)
    assert resumed.steps == whole.steps == (0, 1, 2, 3)
    for a, b in zip(resumed, whole):
        for name, value in b.metrics.items():
            other = a.metrics[name]
            assert (math.isnan(value) and math.isnan(other)) or abs(value - other) <= 1e-12
    assert first.to_records() == [r for r in resumed.to_records() if r["step"] < 2]


def test_compare_trajectories_says_how_it_was_made_in_every_export(tmp_path):
    import json
    from dataclasses import replace

    from filterstats._version import __version__
    from filterstats.results import AnalysisParams

    rng = random.Random(1)
    a = [synthetic_run([rng.gauss(0, 0.05) for _ in range(4)]) for _ in range(3)]
    b = [synthetic_run([rng.gauss(0, 0.05) for _ in range(4)]) for _ in range(2)]
    result = fs.compare_trajectories(a, b, metrics=["orthogonality"], labels=("pgd", "plain"))
    want = {
        "definition": "paper",
        "eps": 0.01,
        "kernel_size": "3x3",
        "n_runs_a": 3,
        "n_runs_b": 2,
        "unit": "run",
        "interval": "Welch t, 95%",
        "version": __version__,
    }
    for key, value in want.items():
        assert result.provenance[key] == value, key
    assert "how: definition=paper, eps=0.01, kernel_size=3x3" in repr(result)
    assert result.to_pandas().attrs["filterstats"]["n_runs_a"] == 3
    text = result.to_csv(tmp_path / "t.csv")
    assert json.loads(text.splitlines()[0].removeprefix("# filterstats "))["n_runs_b"] == 2
    assert (tmp_path / "t.csv").read_text() == text
    saved = json.loads(result.to_json(tmp_path / "t.json"))
    assert saved["filterstats"]["labels"] == "pgd - plain" and len(saved["rows"]) == 4
    assert "how: " in result._repr_html_()
    other = replace(b[0], params=replace(b[0].params, analysis=AnalysisParams(eps=0.05)))
    with pytest.raises(ValueError, match="different parameters"):
        fs.compare_trajectories(a, [other, b[1]], metrics=["orthogonality"])
