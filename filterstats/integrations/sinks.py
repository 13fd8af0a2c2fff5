"""Sinks that send each tracker snapshot to TensorBoard or Weights & Biases.

Both log the values pooled per depth bin (``FilterHistory.by_depth_bin``: the paper's
weights for the metrics, output filters for drift) under
``{prefix}/{metric}/{bin}``, and with ``per_layer=True`` every layer's value under
``{prefix}/{metric}/layer/{layer}``, at the snapshot's step. The parameters of the
tracker are logged once, as text (TensorBoard) or in the run's config (W&B).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from filterstats._optional import require
from filterstats.tracking import HistoryRow, TrackingParams

__all__ = ["TensorBoardSink", "WandbSink", "snapshot_scalars"]


def snapshot_scalars(
    rows: Sequence[HistoryRow],
    pooled: Sequence[Mapping[str, Any]],
    *,
    prefix: str = "filters",
    per_layer: bool = False,
) -> dict[str, float]:
    """The scalars of one snapshot, keyed by their log names.

    Args:
        rows: The snapshot's rows (one per layer).
        pooled: Its values per depth bin.
        prefix: First part of every name.
        per_layer: Also every layer's values.

    Returns:
        ``{name: value}``; NaN values are left out.
    """
    skip = {"step", "bin", "bin_index", "n_layers"}
    scalars: dict[str, float] = {}
    for record in pooled:
        for metric, value in record.items():
            if metric not in skip and math.isfinite(value):
                scalars[f"{prefix}/{metric}/{record['bin']}"] = float(value)
    if per_layer:
        for row in rows:
            for metric, value in row.metrics.items():
                if math.isfinite(value):
                    scalars[f"{prefix}/{metric}/layer/{row.layer}"] = float(value)
    return scalars


class TensorBoardSink:
    """Write each snapshot as TensorBoard scalars.

    Args:
        writer: A ``torch.utils.tensorboard.SummaryWriter`` (or anything with
            ``add_scalar`` and ``add_text``), or a log directory for a new one
            (needs ``pip install tensorboard``).
        prefix: First part of every tag.
        per_layer: Also one tag per layer and metric.
    """

    def __init__(self, writer: Any, *, prefix: str = "filters", per_layer: bool = False) -> None:
        if isinstance(writer, (str, os.PathLike)):
            require("tensorboard", extra="tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(os.fspath(writer))
            self._owned = True
        else:
            if not hasattr(writer, "add_scalar"):
                raise TypeError(
                    "`writer` must be a SummaryWriter (with add_scalar) or a log directory, "
                    f"got {type(writer).__name__}"
                )
            self._owned = False
        self.writer = writer
        self.prefix = prefix
        self.per_layer = per_layer
        self._described = False

    def write(
        self,
        rows: Sequence[HistoryRow],
        pooled: Sequence[Mapping[str, Any]],
        params: TrackingParams,
    ) -> None:
        """Add the snapshot's scalars at its step.

        Args:
            rows: The snapshot's rows.
            pooled: Its values per depth bin.
            params: How the history is recorded (added once as text).
        """
        if not rows:
            return
        step = rows[0].step
        if not self._described and hasattr(self.writer, "add_text"):
            self.writer.add_text(f"{self.prefix}/params", json.dumps(params.to_json_dict()), step)
            self._described = True
        for tag, value in snapshot_scalars(
            rows, pooled, prefix=self.prefix, per_layer=self.per_layer
        ).items():
            self.writer.add_scalar(tag, value, step)
        if hasattr(self.writer, "flush"):
            self.writer.flush()

    def close(self) -> None:
        """Close the writer if this sink made it."""
        if self._owned:
            self.writer.close()


class WandbSink:
    """Log each snapshot to a Weights & Biases run (``run.log``).

    Args:
        run: A ``wandb`` run (``wandb.init(...)``), or any object with ``log``; default
            ``wandb.run`` (needs ``pip install wandb`` and an active run).
        prefix: First part of every key.
        per_layer: Also one key per layer and metric.
        use_step: Pass ``step=`` to ``run.log`` (the snapshot's step); turn off when
            the run's own step counts differently (the values then carry
            ``{prefix}/step``).
    """

    def __init__(
        self,
        run: Any = None,
        *,
        prefix: str = "filters",
        per_layer: bool = False,
        use_step: bool = True,
    ) -> None:
        if run is None:
            run = require("wandb", extra="wandb").run
            if run is None:
                raise ValueError("no active W&B run: call wandb.init() first or pass `run=`")
        if not hasattr(run, "log"):
            raise TypeError(f"`run` must have a log method (a W&B run), got {type(run).__name__}")
        self.run = run
        self.prefix = prefix
        self.per_layer = per_layer
        self.use_step = use_step
        self._described = False

    def write(
        self,
        rows: Sequence[HistoryRow],
        pooled: Sequence[Mapping[str, Any]],
        params: TrackingParams,
    ) -> None:
        """Log the snapshot's values in one ``run.log`` call.

        Args:
            rows: The snapshot's rows.
            pooled: Its values per depth bin.
            params: How the history is recorded (put in ``run.config`` once).
        """
        if not rows:
            return
        if not self._described and getattr(self.run, "config", None) is not None:
            try:
                self.run.config.update({self.prefix: params.to_json_dict()}, allow_val_change=True)
            except (AttributeError, TypeError):
                pass  # a run object without a W&B config
            self._described = True
        payload: dict[str, Any] = snapshot_scalars(
            rows, pooled, prefix=self.prefix, per_layer=self.per_layer
        )
        step = rows[0].step
        if self.use_step:
            self.run.log(payload, step=step)
        else:
            self.run.log({**payload, f"{self.prefix}/step": step})

    def close(self) -> None:
        """Nothing to close (the run belongs to the caller)."""
