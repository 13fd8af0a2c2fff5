"""Where the models of a scan run: local processes, a Slurm job array, or Ray.

The interface is one method, so another engine takes a few lines::

    class MyExecutor(Executor):
        def map(self, fn, items):
            for item in items:          # schedule fn(item) somewhere
                yield fn(item)          # or Lost(item, "why") if the engine lost it

Executors only schedule. ``fn`` (``filterstats.scanning.worker.run_task``) writes
to the store itself, with the same guarantees wherever it runs, and never
raises for a bad model. An executor yields ``Lost`` for a task the engine
itself lost (a killed worker process, a cancelled job); the scan records it as
failed.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from filterstats._optional import require

__all__ = [
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "Lost",
    "RayExecutor",
    "SlurmExecutor",
    "make_executor",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Names accepted by ``scan(executor=...)``.
EXECUTORS: tuple[str, ...] = ("local", "slurm", "ray")


@dataclass(frozen=True)
class Lost:
    """A task the engine lost before ``fn`` could report (killed worker, cancelled job).

    Attributes:
        item: The task.
        error: What the engine said.
    """

    item: Any
    error: str


class Executor(ABC):
    """Runs ``fn`` on each item somewhere; the only interface a scan needs."""

    @abstractmethod
    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R | Lost]:
        """Run ``fn(item)`` for every item and yield the results as they finish.

        Args:
            fn: A picklable module-level function.
            items: Picklable arguments, one per task.

        Yields:
            ``fn(item)``, in any order, or a [`Lost`][filterstats.scanning.executors.Lost]
            for a task the engine lost.
        """


class LocalExecutor(Executor):
    """Worker processes on this machine, or this very process.

    Args:
        workers: Worker processes; ``1`` runs in this process (no start-up cost,
            easiest to debug).
        max_tasks_per_child: Replace a worker process after this many models, to
            return all its memory to the system; ``None``: keep it.
    """

    def __init__(self, workers: int = 1, *, max_tasks_per_child: int | None = None) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"`workers` must be a positive integer, got {workers!r}.")
        self.workers = workers
        self.max_tasks_per_child = max_tasks_per_child

    def __repr__(self) -> str:
        return f"LocalExecutor(workers={self.workers})"

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R | Lost]:
        """See [`Executor.map`][filterstats.scanning.executors.Executor.map]."""
        if self.workers == 1:
            for item in items:
                yield fn(item)
            return
        # spawn: a fresh interpreter per worker; fork would copy this process's torch
        # threads and any CUDA state, which deadlocks or crashes.
        options: dict[str, Any] = {"mp_context": multiprocessing.get_context("spawn")}
        if self.max_tasks_per_child is not None:
            options["max_tasks_per_child"] = self.max_tasks_per_child
        with concurrent.futures.ProcessPoolExecutor(self.workers, **options) as pool:
            futures = {pool.submit(fn, item): item for item in items}
            try:
                for future in concurrent.futures.as_completed(futures):
                    try:
                        yield future.result()
                    except Exception as error:  # the process died: the task is lost
                        yield Lost(futures[future], f"{type(error).__name__}: {error}")
            finally:
                for future in futures:
                    future.cancel()


class SlurmExecutor(Executor):
    """A Slurm job array through submitit, one array task per model.

    Needs ``pip install 'filterstats[slurm]'``. Each task runs one model and
    exits, so memory is returned between models. Tasks are requeued when Slurm
    preempts them, or when their time runs out (up to ``max_requeue`` times), via
    submitit's checkpointing; a requeued model is simply scanned again from its
    checkpoint file, and the store's atomic writes make the repeat harmless.

    Args:
        folder: Where submitit keeps job scripts, pickles and logs.
        cluster: ``None`` (Slurm if available, else local), ``"slurm"``,
            ``"local"`` (subprocesses on this machine) or ``"debug"`` (in this
            process; for tests).
        partition: Slurm partition (``--partition``).
        time_min: Time limit per model, minutes.
        mem_gb: Memory per model, GB.
        cpus_per_task: CPUs per model.
        gpus_per_node: GPUs per model.
        array_parallelism: Most array tasks running at once.
        max_requeue: Requeues after a timeout (preempted tasks are always requeued).
        poll_seconds: How often to check the jobs.
        lost_after_s: On clusters without job accounting (``sacct`` fails), Slurm
            reports no state for a task that ended without a result (killed, out of
            memory, cancelled); such a task is recorded as failed once it has been
            missing from ``squeue`` for this many seconds (the grace covers result
            files that a shared file system shows late).
        **options: Any other ``submitit`` parameter, passed through
            (e.g. ``slurm_account="lab"``, ``slurm_qos="low"``,
            ``slurm_additional_parameters={...}``).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str] = "filterstats-slurm",
        *,
        cluster: str | None = None,
        partition: str | None = None,
        time_min: int = 60,
        mem_gb: float | None = None,
        cpus_per_task: int = 1,
        gpus_per_node: int = 0,
        array_parallelism: int = 64,
        max_requeue: int = 3,
        poll_seconds: float = 10.0,
        lost_after_s: float = 120.0,
        **options: Any,
    ) -> None:
        if cluster not in (None, "slurm", "local", "debug"):
            raise ValueError(
                f"`cluster` must be None, 'slurm', 'local' or 'debug', got {cluster!r}."
            )
        self.folder = Path(folder)
        self.cluster = cluster
        self.poll_seconds = poll_seconds
        self.lost_after_s = lost_after_s
        self.max_requeue = max_requeue
        self.parameters: dict[str, Any] = {
            "timeout_min": time_min,
            "cpus_per_task": cpus_per_task,
            "gpus_per_node": gpus_per_node,
            "slurm_array_parallelism": array_parallelism,
            "name": "filterstats-scan",
        }
        if partition is not None:
            self.parameters["slurm_partition"] = partition
        if mem_gb is not None:
            self.parameters["mem_gb"] = mem_gb
        self.parameters.update(options)

    def __repr__(self) -> str:
        return f"SlurmExecutor(folder={str(self.folder)!r}, cluster={self.cluster!r})"

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R | Lost]:
        """See [`Executor.map`][filterstats.scanning.executors.Executor.map]."""
        submitit = require("submitit", extra="slurm")
        from filterstats.scanning._submitit import RequeueableTask

        if not items:
            return
        executor = submitit.AutoExecutor(
            folder=self.folder, cluster=self.cluster, slurm_max_num_timeout=self.max_requeue
        )
        executor.update_parameters(**self.parameters)
        jobs = executor.map_array(RequeueableTask(fn), list(items))
        logger.info("submitted %d array tasks (%s)", len(jobs), jobs[0].job_id.split("_")[0])
        by_job = {id(job): item for job, item in zip(jobs, items)}
        finished: Iterator[tuple[Any, str | None]]
        if executor.cluster == "debug":  # debug jobs run when their result is asked for
            finished = ((job, None) for job in jobs)
        elif executor.cluster == "slurm":
            finished = self._finished_slurm_jobs(jobs)
        else:
            completed = submitit.helpers.as_completed(jobs, poll_frequency=self.poll_seconds)
            finished = ((job, None) for job in completed)
        try:
            for job, lost in finished:
                if lost is not None:
                    yield Lost(by_job[id(job)], lost)
                    continue
                try:
                    yield job.result()
                except Exception as error:  # failed, cancelled or timed out for good
                    text = str(error).strip().splitlines()
                    yield Lost(
                        by_job[id(job)], f"{type(error).__name__}: {text[-1] if text else ''}"
                    )
        except GeneratorExit:
            for job in jobs:
                if not job.done():
                    job.cancel(check=False)
            raise

    def _finished_slurm_jobs(self, jobs: Sequence[Any]) -> Iterator[tuple[Any, str | None]]:
        """Jobs as they finish (``(job, None)``), or ``(job, why)`` for one Slurm lost.

        As ``submitit.helpers.as_completed``, which learns that a task ended without a
        result only from ``sacct``: without job accounting such a task stays
        ``UNKNOWN`` and would be waited for forever. A task whose state is unknown and
        that has been missing from ``squeue`` for ``lost_after_s`` is reported lost.
        """
        pending = list(jobs)
        missing_since: dict[str, float] = {}
        while pending:
            waiting = []
            for job in pending:
                if job.done():
                    yield job, None
                else:
                    waiting.append(job)
            unknown = [job for job in waiting if job.state.upper() == "UNKNOWN"]
            queued = _queued_array_tasks(unknown[0].job_id.split("_")[0]) if unknown else None
            if queued is not None:
                now = time.monotonic()
                for job in unknown:
                    if job.job_id in queued:
                        missing_since.pop(job.job_id, None)
                        continue
                    since = missing_since.setdefault(job.job_id, now)
                    if now - since >= self.lost_after_s:
                        waiting.remove(job)
                        if job.done(force_check=True):  # its result appeared after all
                            yield job, None
                        else:
                            yield (
                                job,
                                (
                                    f"Slurm task {job.job_id} left the queue without a result "
                                    f"(no job accounting: sacct gives no state; see its log in "
                                    f"{self.folder})"
                                ),
                            )
            pending = waiting
            if pending:
                time.sleep(self.poll_seconds)


def _queued_array_tasks(array_id: str) -> set[str] | None:
    """Ids (``"123_4"``) of the array's tasks still in ``squeue``; ``None``: no answer."""
    command = ["squeue", "--noheader", "--array", "--jobs", array_id, "--format", "%i"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        logger.debug("squeue failed: %s", error)
        return None
    if done.returncode != 0:
        if "invalid job id" in done.stderr.lower():  # the controller forgot the array
            return set()
        logger.debug("squeue failed: %s", done.stderr.strip())
        return None
    return set(done.stdout.split())


class RayExecutor(Executor):
    """Ray tasks, on an existing cluster or a local instance started for the scan.

    Needs ``pip install 'filterstats[ray]'``. Each task runs one model in a Ray
    worker process that exits afterwards (``max_calls=1``), returning its memory.

    Args:
        address: A running cluster (``"auto"``, ``"ray://host:10001"``, ...);
            ``None``: use the connected one, or start a local instance with
            ``num_cpus`` CPUs and stop it at the end.
        num_cpus: CPUs of a local instance.
        cpus_per_task: CPUs Ray reserves per model.
        gpus_per_task: GPUs Ray reserves per model.
        max_retries: Ray's retries of a task whose worker died.
        runtime_env: Ray runtime environment for the workers (filterstats must be
            importable there). ``None``: none for a cluster; for a local instance,
            this interpreter's import path.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int = 2,
        cpus_per_task: float = 1,
        gpus_per_task: float = 0,
        max_retries: int = 1,
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        self.max_retries = max_retries
        self.runtime_env = runtime_env

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r})"

    def _runtime_env(self) -> dict[str, Any]:
        if self.runtime_env is not None:
            return self.runtime_env
        paths = [p for p in sys.path if p and Path(p).is_dir()]
        return {"env_vars": {"PYTHONPATH": os.pathsep.join([str(Path.cwd()), *paths])}}

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R | Lost]:
        """See [`Executor.map`][filterstats.scanning.executors.Executor.map]."""
        ray = require("ray", extra="ray")
        if not items:
            return
        started = False
        if not ray.is_initialized():
            if self.address is None:
                ray.init(
                    num_cpus=self.num_cpus,
                    include_dashboard=False,
                    runtime_env=self._runtime_env(),
                    log_to_driver=False,
                )
                started = True
            else:
                ray.init(address=self.address, runtime_env=self.runtime_env)
        try:
            remote = ray.remote(
                num_cpus=self.cpus_per_task,
                num_gpus=self.gpus_per_task,
                max_calls=1,
                max_retries=self.max_retries,
            )(fn)
            pending = {remote.remote(item): item for item in items}
            try:
                while pending:
                    (done,), _ = ray.wait(list(pending), num_returns=1)
                    item = pending.pop(done)
                    try:
                        yield ray.get(done)
                    except Exception as error:  # worker died, task cancelled
                        yield Lost(item, f"{type(error).__name__}: {error}")
            finally:
                for ref in pending:
                    ray.cancel(ref)
        finally:
            if started:
                ray.shutdown()


def make_executor(
    executor: str | Executor, *, workers: int | None = None, **options: Any
) -> Executor:
    """An executor from its name, or ``executor`` itself.

    Args:
        executor: ``"local"``, ``"slurm"``, ``"ray"`` or an
            [`Executor`][filterstats.scanning.Executor].
        workers: Local worker processes (``"local"`` only); ``None``: half the CPUs.
        **options: Keyword arguments of the executor's class.

    Returns:
        The executor.

    Raises:
        ValueError: An unknown name, or options given with an instance.
    """
    if isinstance(executor, Executor):
        if options:
            raise ValueError(
                f"`executor_options` {sorted(options)} only apply to an executor name; "
                "configure the executor instance instead."
            )
        return executor
    if executor == "local":
        count = workers if workers is not None else max(1, (os.cpu_count() or 1) // 2)
        return LocalExecutor(count, **options)
    if executor == "slurm":
        return SlurmExecutor(**options)
    if executor == "ray":
        return RayExecutor(**options)
    raise ValueError(
        f"`executor` must be one of {EXECUTORS} or an Executor instance, got {executor!r}."
    )
