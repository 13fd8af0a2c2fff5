"""One model, start to finish: load, extract, measure, write, commit, free.

[`run_task`][filterstats.scanning.worker.run_task] is what every executor runs, in
whatever process or machine the engine picks. It never raises for a bad model:
the error goes into the store's manifest and the result, and the scan goes on.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filterstats.scanning.store import Store, StoreEntry

__all__ = ["ScanTask", "TaskResult", "run_task"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanTask:
    """Everything a worker needs for one model (picklable).

    Attributes:
        spec: The model spec; also the ``model`` label of its rows.
        store: Absolute path of the store folder.
        key: The key to store the result under.
        key_fields: What ``key`` hashes.
        loader: ``loader(spec)`` returns anything ``extract_filters`` takes (a
            module, a state dict, a FilterSet); ``None``: the spec itself goes
            through ``extract_filters`` (``filterstats.zoo.specs.load_model``). Must
            be picklable (a module-level function) for process, Slurm and Ray workers.
        extract_kwargs: ``kernel_size``, ``example_inputs``, ``depth``,
            ``trust_pickle`` for ``extract_filters``.
        measure_kwargs: ``eps``, ``definition``, ``normalize``, ``nan_policy``,
            ``device`` for ``analyze``.
        raw_dtype: Also store raw kernels in this dtype; ``None``: don't.
        cwd: Working directory that relative file specs refer to.
    """

    spec: str
    store: str
    key: str
    key_fields: dict[str, Any]
    loader: Callable[[str], Any] | None = None
    extract_kwargs: dict[str, Any] = field(default_factory=dict)
    measure_kwargs: dict[str, Any] = field(default_factory=dict)
    raw_dtype: str | None = None
    cwd: str = ""


@dataclass(frozen=True)
class TaskResult:
    """What a worker reports back about one model.

    Attributes:
        spec: The model spec.
        status: ``"ok"`` or ``"failed"``.
        error: ``"ExceptionType: message"`` when failed.
        seconds: Wall time for the model.
        n_measured: Layers measured.
        n_filters: Kernels in the measured layers.
        warnings: The warnings raised while scanning the model, one text each (the
            scan logs them in the calling process, logger ``filterstats.scanning``).
    """

    spec: str
    status: str
    error: str = ""
    seconds: float = 0.0
    n_measured: int = 0
    n_filters: int = 0
    warnings: tuple[str, ...] = ()


@contextlib.contextmanager
def _working_directory(path: str) -> Iterator[None]:
    if not path or Path.cwd() == Path(path):
        yield
        return
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _measure(task: ScanTask, store: Store) -> StoreEntry:
    from filterstats.analysis import analyze
    from filterstats.resolve import extract_filters
    from filterstats.scanning.raw import write_filters

    start = time.perf_counter()
    with _working_directory(task.cwd):
        # The one resolver, as analyze/compare use it: the same layers for the same model.
        model = task.spec if task.loader is None else task.loader(task.spec)
        filters = extract_filters(model, **task.extract_kwargs)
    del model  # the extracted weights are views; the rest of the model can go
    kernel_size = task.extract_kwargs.get("kernel_size", (3, 3))
    report = analyze(filters, label=task.spec, kernel_size=kernel_size, **task.measure_kwargs)
    layers_file = store.data_file("layers", task.spec, task.key)
    store.write_report(layers_file, report)
    filters_file = ""
    if task.raw_dtype is not None:
        target = store.data_file("filters", task.spec, task.key)
        store.write_file(
            target,
            lambda file: write_filters(
                file,
                filters,
                model=task.spec,
                kernel_size=tuple(kernel_size),
                dtype=str(task.raw_dtype),
            ),
        )
        filters_file = target.name
    return StoreEntry(
        spec=task.spec,
        status="ok",
        key=task.key,
        key_fields=task.key_fields,
        layers_file=layers_file.name,
        filters_file=filters_file,
        raw_dtype=task.raw_dtype or "",
        n_rows=len(report),
        n_measured=len(report.measured),
        n_filters=sum(row.n_filters or 0 for row in report.measured),
        seconds=time.perf_counter() - start,
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        host=socket.gethostname(),
    )


def failure_entry(task: ScanTask, error: str, trace: str = "", seconds: float = 0.0) -> StoreEntry:
    """The manifest entry of a failed model.

    Args:
        task: The model's task.
        error: ``"ExceptionType: message"``.
        trace: Traceback text.
        seconds: Time spent before the failure.

    Returns:
        An entry with ``status="failed"``.
    """
    return StoreEntry(
        spec=task.spec,
        status="failed",
        key=task.key,
        key_fields=task.key_fields,
        error=error,
        traceback=trace,
        seconds=seconds,
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        host=socket.gethostname(),
    )


def run_task(task: ScanTask) -> TaskResult:
    """Scan one model into the store; record a failure instead of raising.

    Steps: clean the model's left-overs, load it with ``task.loader``, extract
    and measure its filters, write its layer table (and raw kernels) atomically,
    commit its manifest entry, free its memory (``del`` + ``gc.collect()``).

    Args:
        task: The model and where to put it.

    Returns:
        The outcome; the store holds the same in its manifest.
    """
    start = time.perf_counter()
    store = Store(task.store)
    store.clean(task.spec)
    # Warnings go back with the result (a worker process has no terminal of its own):
    # the scan logs them where it runs, one line each, whatever the executor.
    with warnings.catch_warnings(record=True) as caught:
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            # Deprecation notices of other packages (torch, timm) are not the user's.
            warnings.filterwarnings("ignore", category=category, module=r"(?!filterstats)")
        entry = _scan_one(task, store, start)
    messages = tuple(dict.fromkeys(str(item.message) for item in caught))
    store.commit(entry)
    return TaskResult(
        spec=task.spec,
        status=entry.status,
        error=entry.error,
        seconds=time.perf_counter() - start,
        n_measured=entry.n_measured,
        n_filters=entry.n_filters,
        warnings=messages,
    )


def _scan_one(task: ScanTask, store: Store, start: float) -> StoreEntry:
    try:
        entry = _measure(task, store)
    except Exception as error:  # a bad model must not stop the scan: record it
        message = f"{type(error).__name__}: {error}"
        trace = "".join(traceback.format_exception(error)[-12:])
        logger.debug("failed %s: %s", task.spec, message)  # the scan reports it
        entry = failure_entry(task, message, trace, time.perf_counter() - start)
    finally:
        gc.collect()  # models can hold gigabytes; free them before the next one
    return entry
