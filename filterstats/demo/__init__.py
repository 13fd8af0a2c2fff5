"""The shipped demo pair: a normally trained and a PGD-robust ``DemoNet`` on 8x8 digits.

Real robust checkpoints cannot be bundled, so filterstats trains and ships its own
small pair: the same five-layer all-3x3 CNN (:class:`DemoNet`) trained from the same
initialisation on scikit-learn's handwritten digits, once with cross-entropy
(``"normal"``) and once with L-inf PGD adversarial training (``"robust"``,
epsilon 0.1 on pixels in [0, 1]), for several seeds. The weights are plain state
dicts loaded with ``torch.load(..., weights_only=True)``; loading needs only torch.
``python -m filterstats.demo.train`` reproduces them (needs scikit-learn).

Examples:
    >>> import torch
    >>> import filterstats.demo as demo
    >>> pair = demo.load_pair(seed=0)
    >>> pair.robust_accuracy.pgd_accuracy > pair.normal_accuracy.pgd_accuracy
    True
    >>> demo.load_model("robust", seed=1)(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

import torch
from torch import nn

from filterstats.demo._records import (
    KINDS,
    METRICS_FILE,
    DemoAccuracy,
    DemoTrainingMetrics,
    TrainConfig,
    weight_file,
)
from filterstats.demo.model import DEMO_WIDTHS, DemoNet

__all__ = [
    "DEMO_WIDTHS",
    "DemoAccuracy",
    "DemoNet",
    "DemoPair",
    "DemoTrainingMetrics",
    "TrainConfig",
    "available_seeds",
    "load_model",
    "load_pair",
    "training_metrics",
]

_WEIGHTS_PACKAGE = "filterstats.demo"
_WEIGHTS_DIR = "weights"


@dataclass(frozen=True, eq=False)
class DemoPair:
    """A normal and a robust ``DemoNet`` trained from the same initialisation.

    Attributes:
        seed: Seed of the initialisation and the data order.
        normal: Model trained with cross-entropy, in eval mode, on CPU.
        robust: Model trained with PGD adversarial training, in eval mode, on CPU.
        normal_accuracy: Recorded clean and PGD test accuracy of ``normal``.
        robust_accuracy: Recorded clean and PGD test accuracy of ``robust``.
        config: Hyper-parameters of both trainings.
    """

    seed: int
    normal: nn.Module
    robust: nn.Module
    normal_accuracy: DemoAccuracy
    robust_accuracy: DemoAccuracy
    config: TrainConfig


@functools.lru_cache(maxsize=1)
def training_metrics() -> DemoTrainingMetrics:
    """The recorded training run of the shipped weights (``weights/metrics.json``).

    Returns:
        Hyper-parameters and the clean / PGD test accuracy of every shipped model.
    """
    resource = resources.files(_WEIGHTS_PACKAGE).joinpath(_WEIGHTS_DIR).joinpath(METRICS_FILE)
    return DemoTrainingMetrics.from_dict(json.loads(resource.read_text()))


def available_seeds() -> tuple[int, ...]:
    """Seeds for which both a normal and a robust model ship, ascending.

    Returns:
        The seeds, e.g. ``(0, 1, 2)``.
    """
    return training_metrics().seeds


def load_model(
    kind: str = "normal", seed: int = 0, *, device: torch.device | str | None = None
) -> nn.Module:
    """Load one shipped demo model.

    Args:
        kind: ``"normal"`` (cross-entropy) or ``"robust"`` (PGD adversarial training).
        seed: One of :func:`available_seeds`.
        device: Where to put the new model; ``None``: CPU.

    Returns:
        A fresh :class:`DemoNet` in eval mode; input ``(N, 1, 8, 8)`` in [0, 1],
        output logits ``(N, 10)``.

    Raises:
        ValueError: If ``kind`` or ``seed`` names no shipped model.
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {list(KINDS)}, got {kind!r}.")
    seeds = available_seeds()
    if isinstance(seed, bool) or not isinstance(seed, int) or seed not in seeds:
        raise ValueError(
            f"`seed` must be one of the shipped seeds {list(seeds)}, got {seed!r}. "
            "Train others with `python -m filterstats.demo.train --out DIR --seeds ...`."
        )
    # One name per joinpath: Traversable.joinpath takes a single argument on Python 3.10.
    resource = (
        resources.files(_WEIGHTS_PACKAGE).joinpath(_WEIGHTS_DIR).joinpath(weight_file(kind, seed))
    )
    with resource.open("rb") as stream:
        state_dict = torch.load(stream, map_location="cpu", weights_only=True)
    model = DemoNet()
    model.load_state_dict(state_dict)
    model.eval()
    if device is not None:
        model.to(device)
    return model


def load_pair(seed: int = 0) -> DemoPair:
    """Load the normal and the robust model of one seed with their recorded metrics.

    Args:
        seed: One of :func:`available_seeds`.

    Returns:
        The pair, both models on CPU in eval mode.
    """
    metrics = training_metrics()
    return DemoPair(
        seed=seed,
        normal=load_model("normal", seed),
        robust=load_model("robust", seed),
        normal_accuracy=metrics.accuracy("normal", seed),
        robust_accuracy=metrics.accuracy("robust", seed),
        config=metrics.config,
    )
