"""FilterTracker: snapshots equal analyze, the model is untouched, drift, the CSV sink."""

from __future__ import annotations

import copy
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import filterstats as fs
from filterstats.tracking import filter_drift
from tests.conftest import model_fingerprint

ROOT = Path(__file__).resolve().parents[1]


class TrackNet(nn.Module):
    """Convolutions of several kinds, batch norm and dropout (modes and RNG matter)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.3)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.point = nn.Conv2d(8, 6, 1)  # skipped: 1x1
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(torch.relu(self.bn(self.conv1(x))))
        x = self.conv2(self.point(torch.relu(self.grouped(x))))
        return self.head(x.mean(dim=(2, 3)))


def batch(step: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 3, 8, 8, generator=g, dtype=dtype), torch.randint(0, 4, (8,), generator=g)


def train(model, opt, steps, tracker=None, *, states=None, hook=False):
    for step in range(steps):
        x, y = batch(step, next(model.parameters()).dtype)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if tracker is not None and not hook:
            tracker.step(step)
        if states is not None:
            states[step] = copy.deepcopy(model)
        opt.zero_grad(set_to_none=False)


def assert_matches_analyze(history, states, label, **options):
    assert history.steps
    for step in history.steps:
        expected = fs.analyze(states[step], label=label, **options)
        got = history.report(step)
        assert [r.layer for r in got] == [r.layer for r in expected]
        assert [r.reason for r in got.skipped] == [r.reason for r in expected.skipped]
        assert got.params == expected.params
        for a, b in zip(got.measured, expected.measured):
            assert (a.conv_depth, a.conv_depth_norm, a.n_filters, a.n_nonsparse, a.groups) == (
                b.conv_depth, b.conv_depth_norm, b.n_filters, b.n_nonsparse, b.groups
            )  # fmt: skip
            assert set(a.metrics) == set(b.metrics)
            for name in b.metrics:
                x, y = a.metrics[name], b.metrics[name]
                assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-12, (step, name)


@pytest.mark.parametrize("hook", [False, True])
@pytest.mark.parametrize("definition", ["paper", "torchconvquality"])
def test_history_at_each_step_equals_analyze_of_a_copy(hook, definition):
    torch.manual_seed(0)
    model = TrackNet().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    tracker = fs.FilterTracker(
        model, every=3, definition=definition, optimizer=opt if hook else None, label="net"
    )
    states: dict[int, nn.Module] = {}
    train(model, opt, 10, tracker, states=states, hook=hook)
    tracker.close()
    history = tracker.history()
    assert history.steps == (0, 3, 6, 9)
    assert history.layers == ("conv1", "grouped", "conv2")
    assert [r.layer for r in history.skipped] == ["point"]
    assert history.params.analysis.definition == definition
    assert history.params.every == 3 and history.params.reference_step == 0
    expected_params = fs.analyze(model, definition=definition).params
    assert history.params.analysis == expected_params
    for step in history.steps:
        report = history.report(step)
        assert report.params.definition == definition
    assert_matches_analyze(history, states, "net", definition=definition)
    # the states really differ between snapshots (the test can fail)
    assert history.report(0)["conv1"].diversity != history.report(9)["conv1"].diversity


def test_hook_is_removed_by_close_and_context_manager():
    model = TrackNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with fs.FilterTracker(model, every=1, optimizer=opt) as tracker:
        train(model, opt, 2, hook=True)
        assert tracker.steps == (0, 1)
    train(model, opt, 2, hook=True)
    assert tracker.steps == (0, 1)
    assert not opt._optimizer_step_post_hooks
    tracker.attach(opt)
    with pytest.raises(RuntimeError, match="already attached"):
        tracker.attach(opt)
    tracker.close()


def run_seeded(with_tracker: bool, every: int = 1):
    torch.manual_seed(123)
    model = TrackNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tracker = fs.FilterTracker(model, every=every, optimizer=opt) if with_tracker else None
    for step in range(50):
        x = torch.randn(8, 3, 8, 8)  # from the global RNG: a tracker drawing numbers shows
        y = torch.randint(0, 4, (8,))
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if step < 49:
            opt.zero_grad()
    if tracker is not None:
        tracker.close()
        assert len(tracker.history().steps) == 50 // every
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return model, opt, grads, torch.get_rng_state()


def test_model_grads_optimizer_and_rng_are_bit_identical_with_and_without_tracker():
    plain, plain_opt, plain_grads, plain_rng = run_seeded(False)
    tracked, tracked_opt, tracked_grads, tracked_rng = run_seeded(True)
    assert model_fingerprint(plain) == model_fingerprint(tracked)
    for (name, a), b in zip(plain.state_dict().items(), tracked.state_dict().values()):
        assert torch.equal(a, b), name
    for name in plain_grads:
        assert torch.equal(plain_grads[name], tracked_grads[name]), name
    for a, b in zip(plain_opt.state_dict()["state"].values(),
                    tracked_opt.state_dict()["state"].values()):  # fmt: skip
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert torch.equal(plain_rng, tracked_rng)
    assert plain.training and tracked.training
    assert all(p.requires_grad for p in tracked.parameters())


def test_tracker_reads_the_weights_without_copy_and_changes_nothing():
    model = TrackNet().eval()
    model.conv1.requires_grad_(False)
    before = model_fingerprint(model)
    tracker = fs.FilterTracker(model, every=1)
    tracker.step(0)
    tracker.step(1)
    assert model_fingerprint(model) == before


def reference_drift(weight, start, threshold):
    """Plain loops in float64."""
    cosines = []
    for i in range(weight.shape[0]):
        a = [float(v) for v in weight[i].reshape(-1)]
        b = [float(v) for v in start[i].reshape(-1)]
        na = math.sqrt(sum(v * v for v in a))
        nb = math.sqrt(sum(v * v for v in b))
        if na == 0 and nb == 0:
            cosines.append(1.0)
        elif na == 0 or nb == 0:
            cosines.append(0.0)
        else:
            cosines.append(sum(x * y for x, y in zip(a, b)) / (na * nb))
    return sum(cosines) / len(cosines), sum(c >= threshold for c in cosines) / len(cosines)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filter_drift_matches_plain_reference(seed):
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(7, 3, 3, 3, generator=g)
    weight = start + 0.2 * torch.randn(7, 3, 3, 3, generator=g)
    weight[0] = start[0] * 3.0  # scaled: cosine 1, unmoved
    weight[1] = -start[1]  # flipped: cosine -1
    weight[2] = 0.0  # zeroed: cosine 0
    start[3] = 0.0
    weight[3] = 0.0  # zero at both: did not move
    for threshold in (0.99, 0.9, 0.5):
        mean, unmoved = filter_drift(weight, start, unmoved_cosine=threshold)
        ref_mean, ref_unmoved = reference_drift(weight, start, threshold)
        assert mean.dtype == torch.float64
        assert abs(float(mean) - ref_mean) < 1e-12
        assert float(unmoved) == ref_unmoved
    chunked = filter_drift(weight, start, unmoved_cosine=0.9, chunk_bytes=1)  # one row a chunk
    assert abs(float(chunked[0]) - reference_drift(weight, start, 0.9)[0]) < 1e-12
    assert float(chunked[1]) == reference_drift(weight, start, 0.9)[1]
    same_mean, same_unmoved = filter_drift(start, start.clone())
    assert float(same_mean) == 1.0 and float(same_unmoved) == 1.0
    with pytest.raises(ValueError, match="shape"):
        filter_drift(weight, start[:3])


@pytest.mark.parametrize("how", ["in_place", "new_parameter"])
def test_drift_is_one_at_first_snapshot_and_drops_for_a_reinitialised_layer(how):
    torch.manual_seed(0)
    model = TrackNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    tracker = fs.FilterTracker(model, every=1)
    train(model, opt, 3, tracker)
    with torch.no_grad():
        if how == "in_place":
            model.conv2.reset_parameters()
        else:
            model.conv2.weight = nn.Parameter(torch.randn_like(model.conv2.weight))
    tracker.step(3)
    history = tracker.history()
    first = [r for r in history if r.step == 0]
    assert all(r.drift_cosine == 1.0 and r.drift_unmoved == 1.0 for r in first)
    cosine = history.values("drift_cosine")
    unmoved = history.values("drift_unmoved")
    assert cosine["conv2"][2] > 0.999 and unmoved["conv2"][2] == 1.0  # tiny lr: barely moved
    assert cosine["conv2"][3] < 0.6 and unmoved["conv2"][3] < 0.5  # re-initialised: the drop
    assert cosine["conv1"][3] > 0.999 and unmoved["conv1"][3] == 1.0


def test_every_zero_first_step_and_increasing_steps():
    model = TrackNet()
    tracker = fs.FilterTracker(model, every=10)
    assert tracker.step(7)  # the first step seen is the reference
    assert not tracker.step(8)
    assert tracker.step(10)
    with pytest.raises(ValueError, match="increase"):
        tracker.snapshot(10)
    manual = fs.FilterTracker(model, every=0)
    assert manual.step(0) and not manual.step(100)
    with pytest.raises(ValueError, match="every"):
        fs.FilterTracker(model, every=-1)
    with pytest.raises(TypeError, match="nn.Module"):
        fs.FilterTracker(model.state_dict())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kernel_size=None"), pytest.warns(fs.FilterStatsWarning):
        fs.FilterTracker(nn.Conv2d(3, 3, 1)).step(0)


def test_history_exports_and_display(tmp_path, golden):
    torch.manual_seed(0)
    model = TrackNet().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker = fs.FilterTracker(model, every=2, label="net")
    train(model, opt, 5, tracker)
    history = tracker.history()
    # frozen: later snapshots do not change a history already returned
    tracker.step(6)
    assert history.steps == (0, 2, 4) and tracker.history().steps == (0, 2, 4, 6)
    frame = history.to_pandas()
    assert len(frame) == 3 * 3 and list(frame.columns) == list(history.columns)
    assert frame.attrs["filterstats"]["every"] == 2
    back = fs.read_history(history.to_csv(tmp_path / "h.csv") and tmp_path / "h.csv")
    assert back.to_records() == history.to_records()
    assert [r.reason for r in back.skipped] == [r.reason for r in history.skipped]
    history.to_parquet(tmp_path / "h.parquet")
    assert fs.read_history(tmp_path / "h.parquet").to_records() == history.to_records()
    pooled = history.by_depth_bin(bins=2)
    assert [r["bin"] for r in pooled[:3]] == ["first", "(0.0, 0.5]", "(0.5, 1.0]"]
    assert pooled[1]["orthogonality"] == history.values("orthogonality")["grouped"][0]
    figure = history.plot()
    assert len(figure.axes) == 4
    assert "<table" in history._repr_html_()
    text = repr(history)
    assert text.startswith("FilterHistory: net — 3 snapshots of 3 layers, 1 skipped")
    with pytest.raises(KeyError, match="no snapshot"):
        history.report(1)


def test_history_golden(golden):
    torch.manual_seed(0)
    model = TrackNet().double()
    tracker = fs.FilterTracker(model, every=1, label="net")
    tracker.step(0)
    with torch.no_grad():
        model.conv2.weight.mul_(-1.0)
        model.grouped.weight[:4].zero_()
    tracker.step(1)
    golden.check("tracking_history", repr(tracker.history()) + "\n")


# ------------------------------------------------------------------ CSV sink, killed run
SCRIPT = """
import sys, time, torch
from pathlib import Path
import filterstats as fs
from tests.test_tracking import TrackNet, batch
from torch import nn

path, steps, pause = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
ckpt = path.with_suffix(".ckpt")
torch.manual_seed(0)
model = TrackNet().double()
opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
start = 0
if ckpt.exists():
    state = torch.load(ckpt, weights_only=True)
    model.load_state_dict(state["model"]); opt.load_state_dict(state["opt"])
    torch.set_rng_state(state["rng"])  # dropout: the same random numbers as one whole run
    start = state["step"] + 1
tracker = fs.FilterTracker(model, every=2, sink=fs.CSVSink(path), label="net")
for step in range(start, steps):
    x, y = batch(step)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step(); opt.zero_grad()
    if tracker.step(step):
        print("snapshot", step, flush=True)
    tmp = ckpt.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                "rng": torch.get_rng_state()}, tmp)
    tmp.replace(ckpt)
    time.sleep(pause)
tracker.close()
print("done", flush=True)
"""


def run_script(tmp_path, path, steps, pause=0.0, kill_after=None):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), str(steps), str(pause)],
        stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    seen = []
    assert proc.stdout is not None
    if kill_after is None:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        return out
    for line in proc.stdout:
        seen.append(line)
        if len([s for s in seen if s.startswith("snapshot")]) >= kill_after:
            time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return "".join(seen)


def test_csv_sink_survives_a_killed_run_and_resumes_without_duplicates(tmp_path):
    path = tmp_path / "run" / "history.csv"
    run_script(tmp_path, path, 40, pause=0.02, kill_after=3)
    killed = fs.read_history(path)  # readable after SIGKILL
    assert killed.steps[:3] == (0, 2, 4)
    assert len(killed) == 3 * len(killed.steps)
    # a torn last write (killed inside a snapshot) is not a snapshot: a snapshot with
    # only some of its layer rows, and a row without its end
    lines = path.read_text().splitlines(keepends=True)
    with path.open("a") as handle:
        handle.write(lines[-1].replace(f"{killed.steps[-1]},", f"{killed.steps[-1] + 2},", 1))
        handle.write(f"{killed.steps[-1] + 2},net,conv1,Conv2d,1,0,0.0,3,8,1,3x3,24")
    assert fs.read_history(path).steps == killed.steps
    run_script(tmp_path, path, 12)  # resume from the last checkpoint
    resumed = fs.read_history(path)
    assert resumed.steps == (0, 2, 4, 6, 8, 10)
    keys = [(r.step, r.layer) for r in resumed]
    assert len(keys) == len(set(keys))
    # equal to one uninterrupted run (drift measured from the first snapshot of the run)
    whole = tmp_path / "whole" / "history.csv"
    run_script(tmp_path, whole, 12)
    full = fs.read_history(whole)
    assert [(r.step, r.layer) for r in full] == keys
    for a, b in zip(resumed, full):
        for name in b.metrics:
            x, y = a.metrics[name], b.metrics[name]
            assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-12, (a.step, name)
    assert resumed.rows[-1].drift_cosine < 1.0


def test_csv_sink_refuses_other_parameters(tmp_path):
    path = tmp_path / "h.csv"
    model = TrackNet()
    with fs.FilterTracker(model, every=1, sink=fs.CSVSink(path)) as tracker:
        tracker.step(0)
    with pytest.raises(ValueError, match="other parameters"):
        fs.FilterTracker(model, every=1, eps=0.1, sink=fs.CSVSink(path)).step(5)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="not a filterstats history"):
        fs.read_history(tmp_path / "x.csv")


def test_steps_without_a_snapshot_read_no_weight(monkeypatch):
    import filterstats.extract as extract

    calls = []
    original = extract._read_conv
    monkeypatch.setattr(extract, "_read_conv", lambda *a: calls.append(a) or original(*a))
    model = TrackNet()
    tracker = fs.FilterTracker(model, every=50)
    tracker.step(0)
    after_first = len(calls)
    assert after_first > 0
    for step in range(1, 50):
        assert not tracker.step(step)
    assert len(calls) == after_first  # nothing read, nothing measured, no host transfer
    assert tracker.step(50) and len(calls) > after_first
