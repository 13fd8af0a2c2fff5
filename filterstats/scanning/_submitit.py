"""A submitit callable that Slurm requeues on preemption (imported only with submitit)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from submitit.helpers import Checkpointable

__all__ = ["RequeueableTask"]


class RequeueableTask(Checkpointable):  # type: ignore[misc,unused-ignore]
    """Runs ``fn(item)``; on preemption or timeout, submitit requeues the same call.

    Nothing needs saving: a model's store files are written atomically at its
    end, so a requeued task simply scans its model again.

    Args:
        fn: The task function.
    """

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, item: Any) -> Any:
        """Run the task."""
        return self.fn(item)
