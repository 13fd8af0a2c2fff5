"""A Lightning ``Callback`` that records filter metrics while ``Trainer.fit`` runs.

Needs ``pip install lightning`` (``filterstats[lightning]``)::

    from filterstats.integrations import LightningFilterTracker

    tracker = LightningFilterTracker(every=100)
    trainer = lightning.Trainer(callbacks=[tracker])
    trainer.fit(module, loader)
    history = tracker.history()

Steps are Lightning's optimizer steps: after the ``n``-th one
(``trainer.global_step == n``) the snapshot is recorded as step ``n - 1``, as a plain
loop ``for step, batch in enumerate(loader)`` counts (with gradient accumulation a step
is one optimizer step, not one batch). The LightningModule is unwrapped to the one
network it holds, as everywhere in filterstats.
"""

from __future__ import annotations

from typing import Any

from filterstats._optional import require
from filterstats.tracking import FilterHistory, FilterTracker, Sink

__all__ = ["LightningFilterTracker"]

_pl = require("lightning.pytorch", extra="lightning")


class LightningFilterTracker(_pl.Callback):  # type: ignore[misc,name-defined]
    """Record a [`FilterTracker`][filterstats.FilterTracker] history during ``fit``.

    Args:
        every: Steps between snapshots.
        sink: As in ``FilterTracker`` (a ``CSVSink``, TensorBoard or W&B sink).
        **options: Any other ``FilterTracker`` argument (``definition``, ``eps``,
            ``kernel_size``, ``unmoved_cosine``, ``label``...).
    """

    def __init__(self, every: int = 100, *, sink: Sink | None = None, **options: Any) -> None:
        super().__init__()
        self.every = every
        self.sink = sink
        self.options = options
        self.tracker: FilterTracker | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Make the tracker for the module (nothing is read yet).

        Args:
            trainer: The Lightning trainer.
            pl_module: The LightningModule being fitted.
        """
        if self.tracker is None:
            self.tracker = FilterTracker(pl_module, every=self.every, sink=self.sink,
                                         **self.options)  # fmt: skip

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Take a snapshot when one is due at this optimizer step.

        Args:
            trainer: The Lightning trainer.
            pl_module: The LightningModule.
            outputs: The training step's outputs (unused).
            batch: The batch (unused).
            batch_idx: Index of the batch (unused).
        """
        if self.tracker is not None and trainer.global_step > 0:
            self.tracker.step(trainer.global_step - 1)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """Close the sinks (the history stays readable).

        Args:
            trainer: The Lightning trainer.
            pl_module: The LightningModule.
        """
        if self.tracker is not None:
            self.tracker.close()

    def history(self) -> FilterHistory:
        """The snapshots so far.

        Returns:
            A [`FilterHistory`][filterstats.FilterHistory].
        """
        if self.tracker is None:
            raise RuntimeError("no history yet: pass the callback to a Trainer and call fit()")
        return self.tracker.history()
