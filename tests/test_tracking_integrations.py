"""The tracker's integrations: TensorBoard and W&B sinks, Lightning and Hugging Face callbacks."""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import filterstats as fs
from filterstats.integrations import HFFilterTracker, TensorBoardSink, WandbSink
from tests.test_tracking import TrackNet, assert_matches_analyze, batch, train


class FakeWriter:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.texts: list[tuple[str, str, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.texts.append((tag, text, step))


class FakeRun:
    def __init__(self) -> None:
        self.logged: list[tuple[dict, int | None]] = []
        self.config = SimpleNamespace(update=lambda values, allow_val_change: None)

    def log(self, payload: dict, step: int | None = None) -> None:
        self.logged.append((dict(payload), step))


def test_importing_the_integrations_imports_no_tool():
    code = (
        "import sys, filterstats.integrations as i; i.HFFilterTracker; i.WandbSink; "
        "print([m for m in ('lightning', 'tensorboard', 'wandb', 'transformers') "
        "if m in sys.modules])"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tensorboard_and_wandb_sinks_log_the_pooled_values_at_each_step():
    torch.manual_seed(0)
    model = TrackNet().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    writer, run = FakeWriter(), FakeRun()
    sinks = [TensorBoardSink(writer, per_layer=True), WandbSink(run)]
    tracker = fs.FilterTracker(model, every=2, sink=sinks)
    train(model, opt, 5, tracker)
    tracker.close()
    history = tracker.history()
    pooled = history.by_depth_bin()
    expected = {
        (f"filters/{m}/{r['bin']}", r["step"]): r[m]
        for r in pooled
        for m in ("sparsity", "diversity", "orthogonality", "drift_cosine", "drift_unmoved")
        if math.isfinite(r[m])
    }
    logged = {(tag, step): value for tag, value, step in writer.scalars}
    assert {k: logged[k] for k in expected} == expected
    assert logged[("filters/diversity/layer/conv2", 4)] == history.values("diversity")["conv2"][2]
    assert len(writer.texts) == 1
    assert [step for _, step in run.logged] == [0, 2, 4]
    for payload, step in run.logged:
        assert {k: v for k, v in payload.items() if (k, step) in expected} == {
            tag: value for (tag, s), value in expected.items() if s == step
        }
    unstepped = WandbSink(FakeRun(), use_step=False)
    unstepped.write(history.rows[:3], pooled[:1], history.params)
    assert unstepped.run.logged[0][1] is None
    assert unstepped.run.logged[0][0]["filters/step"] == 0
    with pytest.raises(TypeError, match="add_scalar"):
        TensorBoardSink(object())
    with pytest.raises(TypeError, match="log"):
        WandbSink(object())


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="installed")
def test_tensorboard_log_dir_without_tensorboard_names_the_extra(tmp_path):
    with pytest.raises(ModuleNotFoundError, match=r"filterstats\[tensorboard\]"):
        TensorBoardSink(tmp_path)


def test_hugging_face_callback_through_a_trainer_like_event_loop():
    """A stand-in for transformers' CallbackHandler: every event called by name."""
    torch.manual_seed(0)
    model = TrackNet().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    callback = HFFilterTracker(every=3, label="net")
    state = SimpleNamespace(global_step=0)
    args, control = SimpleNamespace(), SimpleNamespace()

    def event(name: str, **kwargs: object) -> None:
        getattr(callback, name)(args, state, control, model=model, optimizer=opt, **kwargs)

    states = {}
    event("on_init_end")
    event("on_train_begin")
    for step in range(8):
        event("on_step_begin")
        x, y = batch(step)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        state.global_step += 1
        event("on_optimizer_step")
        event("on_step_end")
        states[step] = copy.deepcopy(model)
        event("on_log", logs={})
    event("on_train_end")
    history = callback.history()
    assert history.steps == (0, 3, 6)
    assert_matches_analyze(history, states, "net")
    with pytest.raises(AttributeError):
        callback.not_an_event  # noqa: B018


lightning = pytest.importorskip("lightning.pytorch")


class LitNet(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = TrackNet().double()

    def training_step(self, batch_, batch_idx):
        x, y = batch_
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)


class Recorder(lightning.Callback):
    def __init__(self) -> None:
        self.states: dict[int, nn.Module] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch_, batch_idx):
        self.states[trainer.global_step - 1] = copy.deepcopy(pl_module.net)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_lightning_callback_history_equals_analyze_at_the_steps(accumulate, tmp_path):
    from filterstats.integrations import LightningFilterTracker

    torch.manual_seed(0)
    data = [batch(i) for i in range(16)]
    module = LitNet()
    tracker = LightningFilterTracker(every=2, label="net")
    recorder = Recorder()
    trainer = lightning.Trainer(
        max_steps=7, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[tracker, recorder],
        accumulate_grad_batches=accumulate, default_root_dir=tmp_path,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's own advice (workers, logging)
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=None))
    history = tracker.history()
    assert history.steps == (0, 2, 4, 6)
    assert history.layers == ("conv1", "grouped", "conv2")  # the held network, unwrapped
    assert_matches_analyze(history, recorder.states, "net")
