"""A Hugging Face ``TrainerCallback`` that records filter metrics while ``Trainer.train`` runs.

It needs nothing installed: ``transformers``' callback handler calls every event
method by name, and this class answers the events it does not use with a no-op, so it
works without ``transformers`` being imported here::

    from filterstats.integrations import HFFilterTracker

    tracker = HFFilterTracker(every=100)
    trainer = transformers.Trainer(model=model, args=args, callbacks=[tracker], ...)
    trainer.train()
    history = tracker.history()

Steps are the trainer's optimizer steps: at ``on_step_end`` (``state.global_step ==
n`` after the ``n``-th one) the snapshot is recorded as step ``n - 1``, as a plain loop
counts. Only convolutions are measured (a model without any raises at the first
snapshot, naming ``kernel_size=None``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from filterstats.tracking import FilterHistory, FilterTracker, Sink

__all__ = ["HFFilterTracker"]


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


class HFFilterTracker:
    """Record a [`FilterTracker`][filterstats.FilterTracker] history during ``train``.

    Args:
        every: Steps between snapshots.
        sink: As in ``FilterTracker``.
        **options: Any other ``FilterTracker`` argument.
    """

    def __init__(self, every: int = 100, *, sink: Sink | None = None, **options: Any) -> None:
        self.every = every
        self.sink = sink
        self.options = options
        self.tracker: FilterTracker | None = None

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("on_"):
            return _ignore  # an event this callback does not use
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Make the tracker for ``kwargs["model"]`` (nothing is read yet).

        Args:
            args: The ``TrainingArguments``.
            state: The ``TrainerState``.
            control: The ``TrainerControl``.
            **kwargs: The trainer passes ``model`` here.
        """
        model = kwargs.get("model")
        if self.tracker is None and model is not None:
            self.tracker = FilterTracker(model, every=self.every, sink=self.sink, **self.options)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Take a snapshot when one is due at this optimizer step.

        Args:
            args: The ``TrainingArguments``.
            state: The ``TrainerState`` (its ``global_step``).
            control: The ``TrainerControl``.
            **kwargs: Unused.
        """
        if self.tracker is not None and state.global_step > 0:
            self.tracker.step(int(state.global_step) - 1)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Close the sinks (the history stays readable).

        Args:
            args: The ``TrainingArguments``.
            state: The ``TrainerState``.
            control: The ``TrainerControl``.
            **kwargs: Unused.
        """
        if self.tracker is not None:
            self.tracker.close()

    def history(self) -> FilterHistory:
        """The snapshots so far.

        Returns:
            A [`FilterHistory`][filterstats.FilterHistory].
        """
        if self.tracker is None:
            raise RuntimeError("no history yet: pass the callback to a Trainer and train()")
        return self.tracker.history()
