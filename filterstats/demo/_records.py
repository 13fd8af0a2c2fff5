"""Frozen records of how the demo pair was trained and how well it does."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

__all__ = ["DemoAccuracy", "DemoTrainingMetrics", "TrainConfig"]

Kind = Literal["normal", "robust"]
KINDS: tuple[Kind, Kind] = ("normal", "robust")
METRICS_FILE = "metrics.json"
FORMAT_VERSION = 1


def weight_file(kind: str, seed: int) -> str:
    """File name of one shipped state dict, e.g. ``"robust_seed1.pt"``."""
    return f"{kind}_seed{seed}.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters shared by the normal and the robust model of every seed.

    Pixel values are in [0, 1]; ``epsilon`` and the step sizes are in those units
    (one grey level of the digits is 1/16 = 0.0625).

    Attributes:
        epochs: Passes over the training split.
        batch_size: Images per optimiser step.
        lr: Adam learning rate at the start of the cosine schedule.
        weight_decay: Adam's L2 penalty (coupled), the same for both kinds.
        epsilon: L-inf radius of the PGD attack in training and evaluation.
        train_steps: PGD steps per batch in adversarial training.
        train_step_size: PGD step size in adversarial training.
        eval_steps: PGD steps of the evaluation attack.
        eval_step_size: PGD step size of the evaluation attack.
        split_seed: Seed of the fixed permutation that splits train from test.
        n_test_split: Images held out as the test split (of 1797).
        n_train: Training images used (the first of the training split);
            ``None``: all of them.
        n_test: Test images evaluated (the first of the test split); ``None``: all.
        threads: ``torch.set_num_threads`` during training.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epsilon: float = 0.1
    train_steps: int = 7
    train_step_size: float = 2.5 * 0.1 / 7
    eval_steps: int = 20
    eval_step_size: float = 2.5 * 0.1 / 20
    split_seed: int = 0
    n_test_split: int = 360
    n_train: int | None = None
    n_test: int | None = None
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy of the fields.

        Returns:
            The fields as a dict.
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error.

        Args:
            data: Fields as written by :meth:`to_dict`.

        Returns:
            The configuration.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"`data` has unknown TrainConfig keys {unknown}; known keys: {sorted(known)}."
            )
        return cls(**data)


@dataclass(frozen=True)
class DemoAccuracy:
    """Test accuracy of one trained demo model.

    Attributes:
        kind: ``"normal"`` (cross-entropy) or ``"robust"`` (PGD adversarial training).
        seed: Seed of the initialisation and of the data order.
        clean_accuracy: Fraction of test images classified correctly, in [0, 1].
        pgd_accuracy: Fraction still correct under the evaluation PGD attack.
        n_test: Number of test images.
        file: Name of the state-dict file.
        sha256: SHA-256 of that file as written by the training script.
    """

    kind: str
    seed: int
    clean_accuracy: float
    pgd_accuracy: float
    n_test: int
    file: str
    sha256: str


@dataclass(frozen=True)
class DemoTrainingMetrics:
    """Everything ``metrics.json`` records about a training run.

    Attributes:
        config: The hyper-parameters.
        models: One record per (kind, seed), normal before robust, seeds ascending.
        quick: Whether this was a ``--quick`` smoke run (subset, few epochs).
        torch_version: ``torch.__version__`` of the training run.
        sklearn_version: ``sklearn.__version__`` of the training run.
    """

    config: TrainConfig
    models: tuple[DemoAccuracy, ...]
    quick: bool
    torch_version: str
    sklearn_version: str

    @property
    def seeds(self) -> tuple[int, ...]:
        """Seeds with both a normal and a robust model, ascending."""
        by_kind = {kind: {m.seed for m in self.models if m.kind == kind} for kind in KINDS}
        return tuple(sorted(by_kind["normal"] & by_kind["robust"]))

    def accuracy(self, kind: str, seed: int) -> DemoAccuracy:
        """Record of one model.

        Args:
            kind: ``"normal"`` or ``"robust"``.
            seed: Training seed.

        Returns:
            Its recorded accuracies and weight file.

        Raises:
            KeyError: If no model of that kind and seed was trained.
        """
        for record in self.models:
            if record.kind == kind and record.seed == seed:
                return record
        raise KeyError(
            f"no {kind!r} model with seed {seed} in the training record; "
            f"seeds: {list(self.seeds)}, kinds: {list(KINDS)}."
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, the layout of ``metrics.json``.

        Returns:
            The record as a dict.
        """
        return {
            "format_version": FORMAT_VERSION,
            "dataset": "sklearn.datasets.load_digits: 1797 images 8x8, pixels / 16 in [0, 1]",
            "model": "filterstats.demo.DemoNet",
            "quick": self.quick,
            "torch_version": self.torch_version,
            "sklearn_version": self.sklearn_version,
            "config": self.config.to_dict(),
            "models": [asdict(record) for record in self.models],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DemoTrainingMetrics:
        """Inverse of :meth:`to_dict`.

        Args:
            data: The contents of ``metrics.json``.

        Returns:
            The training record.
        """
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"metrics format_version {version!r} is not supported (expected "
                f"{FORMAT_VERSION}); re-run `python -m filterstats.demo.train`."
            )
        return cls(
            config=TrainConfig.from_dict(data["config"]),
            models=tuple(DemoAccuracy(**record) for record in data["models"]),
            quick=bool(data["quick"]),
            torch_version=str(data["torch_version"]),
            sklearn_version=str(data["sklearn_version"]),
        )
