"""Train the shipped demo pair: ``DemoNet`` normally and with PGD adversarial training.

Run ``python -m filterstats.demo.train --out DIR`` (CPU, deterministic). For every
seed the same initialisation and the same data order are trained twice:

* ``normal``: cross-entropy on clean images;
* ``robust``: cross-entropy on L-inf PGD adversarial examples only (Madry et al.,
  "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018):
  random start in the epsilon-ball, ``train_steps`` signed-gradient steps,
  projection onto the ball and onto the pixel range [0, 1].

Both are evaluated on a fixed held-out split, clean and under a stronger PGD
attack (``eval_steps`` steps, random start). The script writes
``{normal,robust}_seed{N}.pt`` (plain state dicts) and ``metrics.json`` into DIR.

With ``--track-every N`` (default 23: one epoch of the full data) every run also
records its filter trajectory with a [`FilterTracker`][filterstats.FilterTracker]:
``{kind}_seed{N}.filters.csv`` (read with ``filterstats.read_history``), step 0 the
initialisation (the same for both kinds of a seed) and step ``n`` the weights after
``n`` optimiser steps. The tracker changes nothing: the weights are bit-identical
with and without it. ``--track-every 0`` turns it off.
Needs scikit-learn (``pip install 'filterstats[test]'``) for the data set.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from filterstats._optional import require
from filterstats.demo._records import (
    KINDS,
    METRICS_FILE,
    DemoAccuracy,
    DemoTrainingMetrics,
    TrainConfig,
    weight_file,
)
from filterstats.demo.model import DemoNet

__all__ = [
    "QUICK_CONFIG",
    "evaluate",
    "load_digits_split",
    "main",
    "pgd_attack",
    "train_pair",
    "trajectory_file",
]

logger = logging.getLogger(__name__)

#: Smoke-test settings of ``--quick``: a subset and a few epochs, well under a minute.
QUICK_CONFIG = TrainConfig(epochs=8, batch_size=32, lr=3e-3, n_train=800, n_test=200)


def trajectory_file(kind: str, seed: int) -> str:
    """File name of a run's filter trajectory.

    Args:
        kind: ``"normal"`` or ``"robust"``.
        seed: The seed.

    Returns:
        ``"{kind}_seed{seed}.filters.csv"``.
    """
    return f"{kind}_seed{seed}.filters.csv"


def load_digits_split(config: TrainConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The fixed train/test split of scikit-learn's digits.

    Args:
        config: Uses ``split_seed``, ``n_test_split``, ``n_train`` and ``n_test``.

    Returns:
        ``(train_images, train_labels, test_images, test_labels)``: images float32
        ``(N, 1, 8, 8)`` in [0, 1], labels int64 ``(N,)``.
    """
    datasets = require("sklearn.datasets", extra="test")
    digits = datasets.load_digits()
    images = torch.from_numpy(np.asarray(digits.images, dtype=np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(np.asarray(digits.target, dtype=np.int64))
    order = torch.from_numpy(np.random.default_rng(config.split_seed).permutation(len(labels)))
    test_index = order[: config.n_test_split]
    train_index = order[config.n_test_split :]
    if config.n_train is not None:
        train_index = train_index[: config.n_train]
    if config.n_test is not None:
        test_index = test_index[: config.n_test]
    return images[train_index], labels[train_index], images[test_index], labels[test_index]


def pgd_attack(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    epsilon: float,
    steps: int,
    step_size: float,
    generator: torch.Generator,
) -> Tensor:
    """L-inf PGD with a random start, maximising the cross-entropy.

    Args:
        model: Classifier; only its input gradient is computed (parameter
            gradients are left untouched).
        images: Clean images ``(N, 1, 8, 8)`` in [0, 1].
        labels: True classes ``(N,)``.
        epsilon: Radius of the L-inf ball, in pixel units.
        steps: Signed-gradient ascent steps.
        step_size: Size of each step, in pixel units.
        generator: Source of the uniform random start.

    Returns:
        Adversarial images, same shape, within ``epsilon`` of ``images`` and in [0, 1].
    """
    noise = torch.rand(images.shape, generator=generator, dtype=images.dtype)
    adversarial = (images + (2 * noise - 1) * epsilon).clamp(0, 1)
    for _ in range(steps):
        adversarial.requires_grad_(True)
        loss = F.cross_entropy(model(adversarial), labels)
        (gradient,) = torch.autograd.grad(loss, adversarial)
        adversarial = adversarial.detach() + step_size * gradient.sign()
        adversarial = torch.min(torch.max(adversarial, images - epsilon), images + epsilon)
        adversarial = adversarial.clamp(0, 1)
    return adversarial.detach()


def evaluate(
    model: nn.Module, images: Tensor, labels: Tensor, config: TrainConfig, *, seed: int
) -> tuple[float, float]:
    """Clean and PGD accuracy on a test set.

    Args:
        model: Classifier in eval mode.
        images: Test images ``(N, 1, 8, 8)`` in [0, 1].
        labels: Their classes ``(N,)``.
        config: Uses ``epsilon``, ``eval_steps``, ``eval_step_size``.
        seed: Seed of the attack's random start.

    Returns:
        ``(clean_accuracy, pgd_accuracy)``, fractions in [0, 1].
    """
    with torch.no_grad():
        clean = (model(images).argmax(1) == labels).float().mean().item()
    adversarial = pgd_attack(
        model,
        images,
        labels,
        epsilon=config.epsilon,
        steps=config.eval_steps,
        step_size=config.eval_step_size,
        generator=torch.Generator().manual_seed(10_000 + seed),
    )
    with torch.no_grad():
        robust = (model(adversarial).argmax(1) == labels).float().mean().item()
    return clean, robust


def _train_one(
    kind: str,
    seed: int,
    config: TrainConfig,
    images: Tensor,
    labels: Tensor,
    *,
    track: Path | None = None,
    track_every: int = 0,
) -> DemoNet:
    torch.manual_seed(seed)
    model = DemoNet()  # same seed -> the same initialisation for both kinds
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    tracker = None
    if track is not None and track_every > 0:
        from filterstats.tracking import CSVSink, FilterTracker

        track.unlink(missing_ok=True)  # a new run: a new trajectory
        track.with_name(track.name + ".reference.pt").unlink(missing_ok=True)
        tracker = FilterTracker(
            model, every=track_every, sink=CSVSink(track), label=f"{kind}_seed{seed}"
        )
        tracker.step(0)  # the initialisation
    steps = 0
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    data_order = torch.Generator().manual_seed(seed)
    attack_noise = torch.Generator().manual_seed(1_000 + seed)
    model.train()
    for epoch in range(config.epochs):
        permutation = torch.randperm(len(labels), generator=data_order)
        total_loss = 0.0
        for start in range(0, len(labels), config.batch_size):
            index = permutation[start : start + config.batch_size]
            batch, target = images[index], labels[index]
            if kind == "robust":
                batch = pgd_attack(
                    model,
                    batch,
                    target,
                    epsilon=config.epsilon,
                    steps=config.train_steps,
                    step_size=config.train_step_size,
                    generator=attack_noise,
                )
            loss = F.cross_entropy(model(batch), target)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            steps += 1
            if tracker is not None:
                tracker.step(steps)
            total_loss += loss.item() * len(index)
        schedule.step()
        logger.info(
            "%s seed %d epoch %d/%d: loss %.4f",
            kind,
            seed,
            epoch + 1,
            config.epochs,
            total_loss / len(labels),
        )
    if tracker is not None:
        tracker.close()
    model.eval()
    return model


def train_pair(
    out: Path,
    seeds: Sequence[int],
    config: TrainConfig,
    *,
    quick: bool = False,
    track_every: int = 0,
) -> DemoTrainingMetrics:
    """Train, evaluate and save a normal and a robust ``DemoNet`` per seed.

    Args:
        out: Directory for ``{kind}_seed{N}.pt`` and ``metrics.json`` (created).
        seeds: Seeds to train, each giving one pair.
        config: Hyper-parameters for every model.
        quick: Recorded in ``metrics.json`` to mark smoke runs.
        track_every: Record each run's filter trajectory every this many optimiser
            steps into ``{kind}_seed{N}.filters.csv``; ``0``: do not.

    Returns:
        The record that was written to ``out / "metrics.json"``.
    """
    sklearn = require("sklearn", extra="test")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(config.threads)
    out.mkdir(parents=True, exist_ok=True)
    train_images, train_labels, test_images, test_labels = load_digits_split(config)
    records = []
    for seed in seeds:
        for kind in KINDS:
            model = _train_one(
                kind, seed, config, train_images, train_labels,
                track=out / trajectory_file(kind, seed), track_every=track_every,
            )  # fmt: skip
            clean, robust = evaluate(model, test_images, test_labels, config, seed=seed)
            logger.info("%s seed %d: clean %.4f, PGD %.4f", kind, seed, clean, robust)
            path = out / weight_file(kind, seed)
            state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
            torch.save(state, path)
            records.append(
                DemoAccuracy(
                    kind=kind,
                    seed=seed,
                    clean_accuracy=round(clean, 6),
                    pgd_accuracy=round(robust, 6),
                    n_test=len(test_labels),
                    file=path.name,
                    sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                )
            )
    metrics = DemoTrainingMetrics(
        config=config,
        models=tuple(records),
        quick=quick,
        torch_version=torch.__version__,
        sklearn_version=sklearn.__version__,
    )
    (out / METRICS_FILE).write_text(json.dumps(metrics.to_dict(), indent=2) + "\n")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring.

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(
        prog="python -m filterstats.demo.train",
        description="Train the filterstats demo pair (normal and PGD-robust DemoNet).",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs")
    parser.add_argument("--epsilon", type=float, default=None, help="L-inf radius in [0, 1]")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_CONFIG.n_train} training images, {QUICK_CONFIG.epochs} epochs",
    )
    parser.add_argument(
        "--track-every",
        type=int,
        default=23,
        help="record the filter trajectory every N optimiser steps (0: off)",
    )
    args = parser.parse_args(argv)
    if args.track_every < 0:
        parser.error(f"--track-every must be >= 0, got {args.track_every}")
    config = QUICK_CONFIG if args.quick else TrainConfig()
    if args.epochs is not None:
        if args.epochs < 1:
            parser.error(f"--epochs must be a positive integer, got {args.epochs}")
        config = dataclasses.replace(config, epochs=args.epochs)
    if args.epsilon is not None:
        if not 0 < args.epsilon <= 1:
            parser.error(f"--epsilon must be in (0, 1], got {args.epsilon}")
        config = dataclasses.replace(
            config,
            epsilon=args.epsilon,
            train_step_size=2.5 * args.epsilon / config.train_steps,
            eval_step_size=2.5 * args.epsilon / config.eval_steps,
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    metrics = train_pair(
        args.out, args.seeds, config, quick=args.quick, track_every=args.track_every
    )
    for record in metrics.models:
        print(
            f"{record.kind:6s} seed {record.seed}: clean {record.clean_accuracy:.3f}, "
            f"PGD {record.pgd_accuracy:.3f} -> {args.out / record.file}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
