"""The shipped demo pair: loading, recorded metrics, and the training script."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import filterstats.demo as demo
from filterstats.demo.model import DemoNet
from filterstats.demo.train import pgd_attack

REPO_ROOT = Path(__file__).resolve().parents[1]
SEEDS = demo.available_seeds()
KINDS = ("normal", "robust")
CHANCE = 0.1


def _shipped_bytes(kind: str, seed: int) -> bytes:
    path = resources.files("filterstats.demo").joinpath("weights").joinpath(f"{kind}_seed{seed}.pt")
    return path.read_bytes()


def _run_train(*args: str, out: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "filterstats.demo.train", "--out", str(out), *args]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=True
    )


def test_several_seeds_ship():
    assert len(SEEDS) >= 3
    assert SEEDS == tuple(sorted(set(SEEDS)))


def test_total_weights_are_small():
    total = sum(len(_shipped_bytes(kind, seed)) for kind in KINDS for seed in SEEDS)
    assert total < 5 * 2**20


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
def test_shipped_file_loads_weights_only_into_the_architecture(kind, seed):
    import io

    state_dict = torch.load(
        io.BytesIO(_shipped_bytes(kind, seed)), map_location="cpu", weights_only=True
    )
    reference = DemoNet()
    reference.load_state_dict(state_dict)  # strict: same keys and shapes
    model = demo.load_model(kind, seed)
    assert isinstance(model, DemoNet)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, state_dict[name], rtol=0, atol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
def test_shipped_file_is_the_one_recorded(kind, seed):
    record = demo.training_metrics().accuracy(kind, seed)
    assert record.file == f"{kind}_seed{seed}.pt"
    assert hashlib.sha256(_shipped_bytes(kind, seed)).hexdigest() == record.sha256


@pytest.mark.parametrize("kind", KINDS)
def test_loaded_model_is_in_eval_mode_and_gives_logits(kind):
    model = demo.load_model(kind, SEEDS[0])
    assert not any(module.training for module in model.modules())
    with torch.no_grad():
        logits = model(torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert logits.shape == (5, 10)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_load_model_device_and_fresh_copies():
    first = demo.load_model("robust", SEEDS[0], device="cpu")
    second = demo.load_model("robust", SEEDS[0])
    assert {p.device.type for p in first.parameters()} == {"cpu"}
    with torch.no_grad():
        first.conv1.weight.zero_()
    assert second.conv1.weight.abs().sum() > 0  # no shared cached module


def test_normal_and_robust_differ_but_share_the_architecture():
    pair = demo.load_pair(SEEDS[0])
    assert type(pair.normal) is type(pair.robust)
    assert not torch.equal(pair.normal.conv1.weight, pair.robust.conv1.weight)
    assert pair.normal_accuracy.kind == "normal"
    assert pair.robust_accuracy.kind == "robust"
    assert pair.seed == pair.normal_accuracy.seed == pair.robust_accuracy.seed == SEEDS[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "adversarial"}, "`kind` must be one of"),
        ({"seed": 99}, "`seed` must be one of the shipped seeds"),
        ({"seed": True}, "`seed` must be one of the shipped seeds"),
    ],
)
def test_load_model_rejects_unknown_models(kwargs, match):
    with pytest.raises(ValueError, match=match):
        demo.load_model(**kwargs)


def test_recorded_metrics_are_sane():
    metrics = demo.training_metrics()
    assert not metrics.quick
    assert 0 < metrics.config.epsilon <= 0.3
    assert metrics.config.eval_steps >= metrics.config.train_steps
    for seed in SEEDS:
        normal = metrics.accuracy("normal", seed)
        robust = metrics.accuracy("robust", seed)
        for record in (normal, robust):
            assert 0.9 < record.clean_accuracy <= 1.0
            assert 0.0 <= record.pgd_accuracy <= record.clean_accuracy
            assert record.n_test > 100
        assert robust.pgd_accuracy > normal.pgd_accuracy + 0.1


def test_metrics_json_round_trips():
    metrics = demo.training_metrics()
    raw = (
        resources.files("filterstats.demo").joinpath("weights").joinpath("metrics.json").read_text()
    )
    assert type(metrics).from_dict(json.loads(raw)) == metrics
    assert json.loads(json.dumps(metrics.to_dict())) == json.loads(raw)


def test_loading_does_not_need_sklearn():
    code = (
        "import sys; sys.modules['sklearn'] = None\n"  # any sklearn import now fails
        "import filterstats.demo as demo\n"
        "pair = demo.load_pair(demo.available_seeds()[-1])\n"
        "assert pair.robust_accuracy.pgd_accuracy > 0\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, check=True, timeout=120)


def test_pgd_attack_stays_in_the_ball_and_the_pixel_range():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(16, 1, 8, 8, generator=generator)
    images[:4] = 0.0
    images[4:8] = 1.0
    labels = torch.randint(0, 10, (16,), generator=generator)
    model = demo.load_model("normal", SEEDS[0])
    weights_before = [p.detach().clone() for p in model.parameters()]
    adversarial = pgd_attack(
        model, images, labels, epsilon=0.1, steps=5, step_size=0.03, generator=generator
    )
    assert adversarial.shape == images.shape
    assert (adversarial - images).abs().max() <= 0.1 + 1e-6
    assert adversarial.min() >= 0
    assert adversarial.max() <= 1
    assert all(p.grad is None for p in model.parameters())
    for before, after in zip(weights_before, model.parameters(), strict=True):
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    with torch.no_grad():
        loss_clean = F.cross_entropy(model(images), labels)
        loss_adversarial = F.cross_entropy(model(adversarial), labels)
    assert loss_adversarial > loss_clean


def _reference_digits_test_split():
    """The documented split, rebuilt without the training module: permutation seed, first 360."""
    import numpy as np

    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    config = demo.training_metrics().config
    order = np.random.default_rng(config.split_seed).permutation(len(digits.target))
    test_index = order[: config.n_test_split]
    images = torch.tensor(digits.images[test_index] / 16.0, dtype=torch.float32).unsqueeze(1)
    return images, torch.tensor(digits.target[test_index])


def _reference_pgd(model, images, labels, *, epsilon, steps, step_size, seed):
    """Plain L-inf PGD written independently of the package's attack."""
    generator = torch.Generator().manual_seed(seed)
    delta = torch.empty_like(images).uniform_(-epsilon, epsilon, generator=generator)
    delta = ((images + delta).clamp(0, 1) - images).requires_grad_(True)
    for _ in range(steps):
        loss = F.cross_entropy(model(images + delta), labels, reduction="sum")
        loss.backward()
        with torch.no_grad():
            delta += step_size * delta.grad.sign()
            delta.clamp_(-epsilon, epsilon)
            delta.copy_((images + delta).clamp(0, 1) - images)
        delta.grad = None
    return (images + delta).detach()


@pytest.mark.parametrize("seed", SEEDS)
def test_recorded_clean_accuracies_reproduce(seed):
    images, labels = _reference_digits_test_split()
    pair = demo.load_pair(seed)
    for model, record in ((pair.normal, pair.normal_accuracy), (pair.robust, pair.robust_accuracy)):
        with torch.no_grad():
            clean = (model(images).argmax(1) == labels).double().mean().item()
        assert record.n_test == len(labels)
        assert clean == pytest.approx(record.clean_accuracy, abs=1.5 / len(labels))


def test_recorded_pgd_accuracies_reproduce_with_an_independent_attack():
    images, labels = _reference_digits_test_split()
    config = demo.training_metrics().config
    pair = demo.load_pair(SEEDS[0])
    pgd = {}
    for kind, model, record in (
        ("normal", pair.normal, pair.normal_accuracy),
        ("robust", pair.robust, pair.robust_accuracy),
    ):
        adversarial = _reference_pgd(
            model,
            images,
            labels,
            epsilon=config.epsilon,
            steps=config.eval_steps,
            step_size=config.eval_step_size,
            seed=123,
        )
        with torch.no_grad():
            pgd[kind] = (model(adversarial).argmax(1) == labels).double().mean().item()
        # another random start: close to, not equal to, the recorded value
        assert pgd[kind] == pytest.approx(record.pgd_accuracy, abs=0.05)
    assert pgd["robust"] > pgd["normal"] + 0.1


@pytest.mark.slow
def test_quick_training_run_still_trains(tmp_path):
    pytest.importorskip("sklearn")
    result = _run_train("--quick", "--seeds", "0", out=tmp_path)
    assert "robust seed 0" in result.stdout
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["quick"] is True
    assert record["config"]["n_train"] is not None
    accuracies = {model["kind"]: model for model in record["models"]}
    assert set(accuracies) == set(KINDS)
    for kind in KINDS:
        path = tmp_path / f"{kind}_seed0.pt"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == accuracies[kind]["sha256"]
        DemoNet().load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        assert accuracies[kind]["clean_accuracy"] > 3 * CHANCE
    assert accuracies["robust"]["pgd_accuracy"] > accuracies["normal"]["pgd_accuracy"]


@pytest.mark.slow
def test_training_is_deterministic(tmp_path):
    pytest.importorskip("sklearn")
    for run in ("a", "b"):
        _run_train("--quick", "--epochs", "1", "--seeds", "3", out=tmp_path / run)
    for kind in KINDS:
        first = torch.load(tmp_path / "a" / f"{kind}_seed3.pt", weights_only=True)
        second = torch.load(tmp_path / "b" / f"{kind}_seed3.pt", weights_only=True)
        assert first.keys() == second.keys()
        for name in first:
            torch.testing.assert_close(first[name], second[name], rtol=0, atol=0)


def test_train_cli_rejects_bad_arguments(tmp_path, capsys):
    from filterstats.demo.train import main

    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--epochs", "0"])
    assert "--epochs must be a positive integer, got 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_core_extraction_sees_five_sequential_3x3_layers():
    import filterstats as fs

    model = demo.load_model("robust", SEEDS[0])
    filterset = fs.extract_filters(model)
    assert [layer.name for layer in filterset] == [f"conv{i}" for i in range(1, 6)]
    assert [layer.conv_depth for layer in filterset] == [0, 1, 2, 3, 4]
    for layer, width in zip(filterset, demo.DEMO_WIDTHS, strict=True):
        assert layer.out_channels == width
        torch.testing.assert_close(layer.weight, getattr(model, layer.name).weight)
    values = fs.orthogonality(filterset)
    assert values.shape == (5,)
    assert bool(((values >= 0) & (values <= 1)).all())
