"""``scan``: many models into a resumable store, on this machine or a cluster."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from filterstats._checks import normalize_kernel_size
from filterstats._progress import progress_bar
from filterstats._text import plural
from filterstats.scanning.executors import Executor, Lost, make_executor
from filterstats.scanning.keys import FINGERPRINTS, fingerprint, model_key
from filterstats.scanning.raw import RAW_DTYPES
from filterstats.scanning.store import STORE_VERSION, Store
from filterstats.scanning.worker import ScanTask, TaskResult, failure_entry, run_task

__all__ = ["ModelOutcome", "ScanSummary", "parse_shard", "read_specs", "scan", "select_specs"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelOutcome:
    """What happened to one model in a scan.

    Attributes:
        spec: The model spec.
        status: ``"ok"`` (scanned now), ``"skipped"`` (already complete in the
            store) or ``"failed"``.
        error: ``"ExceptionType: message"`` when failed.
        seconds: Wall time spent on it (0 when skipped).
    """

    spec: str
    status: str
    error: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class ScanSummary:
    """The outcome of a scan, one entry per selected model.

    Attributes:
        store: The store folder.
        outcomes: Per model, in spec order.
    """

    store: str
    outcomes: tuple[ModelOutcome, ...]

    @property
    def succeeded(self) -> tuple[str, ...]:
        """Specs scanned successfully by this run."""
        return tuple(o.spec for o in self.outcomes if o.status == "ok")

    @property
    def skipped(self) -> tuple[str, ...]:
        """Specs already complete in the store, not scanned again."""
        return tuple(o.spec for o in self.outcomes if o.status == "skipped")

    @property
    def failed(self) -> dict[str, str]:
        """Failed specs and their errors."""
        return {o.spec: o.error for o in self.outcomes if o.status == "failed"}

    @property
    def ok(self) -> bool:
        """``True`` when no selected model failed (the store holds all of them)."""
        return not self.failed

    def __repr__(self) -> str:
        lines = [
            f"ScanSummary: {len(self.succeeded)} scanned, {len(self.skipped)} already in the "
            f"store, {len(self.failed)} failed ({self.store})"
        ]
        lines += [f"  FAILED {spec}: {error}" for spec, error in self.failed.items()]
        return "\n".join(lines)


def read_specs(path: str | os.PathLike[str]) -> list[str]:
    """Model specs from a text file: one per line; comments and blank lines ignored.

    A comment is a line starting with ``#``, or the rest of a line from a ``#`` that
    follows whitespace (``model.pt  # the robust twin``); a ``#`` inside a spec (a
    file name such as ``run#3.pt``) is kept.

    Args:
        path: The specs file.

    Returns:
        The specs, in file order.
    """
    specs = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = _TRAILING_COMMENT.sub("", line).strip()
        if text and not text.startswith("#"):
            specs.append(text)
    return specs


_TRAILING_COMMENT = re.compile(r"\s#.*$")


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """Parse ``"i/n"`` (0-based shard ``i`` of ``n``).

    Args:
        shard: ``"i/n"``, ``(i, n)`` or ``None``.

    Returns:
        ``(i, n)`` or ``None``.

    Raises:
        ValueError: Not of the form ``i/n`` with ``0 <= i < n``.
    """
    if shard is None:
        return None
    try:
        index, count = (
            (int(p) for p in shard.split("/")) if isinstance(shard, str) else map(int, shard)
        )
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise ValueError(
            f"`shard` must be 'i/n' with 0 <= i < n (0-based, as Slurm array indices), "
            f"got {shard!r}; e.g. '0/4' ... '3/4'."
        )
    return index, count


def select_specs(
    specs: Sequence[str], *, shard: str | tuple[int, int] | None = None, limit: int | None = None
) -> list[str]:
    """The specs one run handles: duplicates dropped, then shard ``i`` of ``n``, then ``limit``.

    Shard ``i/n`` takes every ``n``-th spec starting at position ``i`` of the
    de-duplicated list, so ``n`` runs with ``i = 0 .. n-1`` cover every spec once.
    ``limit`` then keeps the first ``limit`` specs of the shard (already
    complete ones included, so that a repeated run selects the same specs).

    Args:
        specs: All specs.
        shard: ``"i/n"`` or ``(i, n)``; ``None``: all.
        limit: At most this many; ``None``: no limit.

    Returns:
        The selected specs, in input order.
    """
    unique = list(dict.fromkeys(specs))
    if len(unique) < len(specs):
        logger.warning("%s ignored", plural(len(specs) - len(unique), "duplicate spec"))
    parsed = parse_shard(shard)
    if parsed is not None:
        index, count = parsed
        unique = unique[index::count]
    if limit is not None:
        if limit < 0:
            raise ValueError(f"`limit` must be >= 0, got {limit}.")
        unique = unique[:limit]
    return unique


def scan(
    specs: Sequence[str],
    store: str | os.PathLike[str],
    *,
    executor: str | Executor = "local",
    workers: int | None = None,
    limit: int | None = None,
    shard: str | tuple[int, int] | None = None,
    raw_filters: bool = False,
    raw_dtype: str = "float16",
    loader: Callable[[str], Any] | None = None,
    fingerprint_method: str = "stat",
    kernel_size: int | tuple[int, ...] | None = (3, 3),
    eps: float = 0.01,
    definition: str = "paper",
    normalize: bool | None = None,
    nan_policy: str = "propagate",
    depth: str = "auto",
    example_inputs: Any = None,
    device: str | torch.device | None = None,
    trust_pickle: bool = False,
    executor_options: dict[str, Any] | None = None,
    callback: Callable[[ModelOutcome], None] | None = None,
    progress: bool = True,
) -> ScanSummary:
    """Analyse many models into a store that survives crashes and resumes.

    Each selected model is loaded, measured with
    [`analyze`][filterstats.analyze] and written to ``store`` as its own Parquet
    file, one model at a time per worker, memory freed in between. A re-run
    skips the models stored complete under the same key (spec, weights
    fingerprint, settings, version; see ``filterstats.scanning.keys``) and retries
    failed ones. A failing model (missing or corrupt checkpoint, unsupported
    layers) is recorded with its error and the scan goes on. Kill it at any
    moment: the store holds whole models only, and the next run continues.

    Read the result with [`open_store`][filterstats.scanning.open_store].

    Args:
        specs: Model specs (see ``filterstats.zoo.specs``), e.g.
            ``["ckpts/a.pt", "timm:resnet18", "robustbench:cifar10/Linf/NAME@models"]``.
            Each spec is also the ``model`` label of its rows. Read a file with
            [`read_specs`][filterstats.scanning.read_specs].
        store: Store folder, created if missing.
        executor: ``"local"`` (processes on this machine), ``"slurm"`` (a job
            array via submitit), ``"ray"``, or an
            [`Executor`][filterstats.scanning.Executor].
        workers: Local worker processes; ``1``: this process; ``None``: half
            the CPUs. Ignored by other executors.
        limit: Only the first ``limit`` selected specs.
        shard: ``"i/n"``: only every ``n``-th spec from position ``i`` (0-based).
        raw_filters: Also store every kernel with its layer metadata (see
            ``filterstats.scanning.raw``; about 17 MB per million 3x3 kernels in float16,
            38 MB in float32).
        raw_dtype: ``"float16"`` or ``"float32"`` for the raw kernels.
        loader: ``loader(spec)`` returns a module, a state dict or a FilterSet;
            ``None``: ``filterstats.zoo.specs.load_model``. Must be a module-level
            function for worker processes, Slurm and Ray.
        fingerprint_method: How weights files are recognised as unchanged:
            ``"stat"`` (size and mtime) or ``"sha256"`` (content).
        kernel_size: As in ``analyze``.
        eps: As in ``analyze``.
        definition: As in ``analyze``.
        normalize: As in ``analyze``.
        nan_policy: As in ``analyze``.
        depth: As in ``analyze``.
        example_inputs: As in ``analyze``.
        device: As in ``analyze``.
        trust_pickle: As in ``analyze``: allow checkpoints that need pickled code
            (for the default loader).
        executor_options: Keyword arguments for the executor class
            (e.g. ``{"partition": "gpu", "time_min": 30}`` for Slurm,
            ``{"address": "auto"}`` for Ray).
        callback: Called with each model's outcome as it finishes (in this process).
        progress: Show a progress bar on stderr (tqdm, if installed).

    Returns:
        A [`ScanSummary`][filterstats.scanning.ScanSummary]; ``.ok`` is ``True``
        when every selected model is in the store.

    Raises:
        TypeError: ``specs`` is a single string.
        ValueError: A bad ``shard``, ``limit``, ``raw_dtype`` or executor name.

    Examples:
        >>> import filterstats as fs  # doctest: +SKIP
        >>> summary = fs.scan(["a.pt", "b.pt"], "results/", workers=2)  # doctest: +SKIP
        >>> fs.open_store("results/").groupby("model")["sparsity"].mean()  # doctest: +SKIP
    """
    if isinstance(specs, (str, os.PathLike)):
        raise TypeError(
            f"`specs` must be a list of model specs, got the single {type(specs).__name__} "
            f"{str(specs)!r}; wrap it in a list, or read a specs file with "
            "filterstats.scanning.read_specs(path)."
        )
    kernel_size = normalize_kernel_size(kernel_size)  # 3 is (3, 3), as everywhere
    if raw_filters:
        if raw_dtype not in RAW_DTYPES:
            raise ValueError(f"`raw_dtype` must be one of {RAW_DTYPES}, got {raw_dtype!r}.")
        if not isinstance(kernel_size, tuple):
            raise ValueError(
                f"raw filters need one kernel size: pass `kernel_size` as a tuple such as "
                f"(3, 3), got {kernel_size!r}."
            )
    if fingerprint_method not in FINGERPRINTS:
        raise ValueError(
            f"`fingerprint_method` must be one of {FINGERPRINTS}, got {fingerprint_method!r}."
        )
    selected = select_specs(specs, shard=shard, limit=limit)
    engine = make_executor(executor, workers=workers, **(executor_options or {}))
    target = Store(store, create=True)
    from filterstats._version import __version__
    from filterstats.layers import selection_text
    from filterstats.results import SCHEMA_VERSION

    settings = {
        "kernel_size": selection_text(kernel_size),
        "eps": eps,
        "definition": definition,
        "normalize": normalize,
        "nan_policy": nan_policy,
        "depth": depth,
        "version": __version__,
        "schema_version": SCHEMA_VERSION,
        "store_version": STORE_VERSION,
    }
    wanted_raw = raw_dtype if raw_filters else None
    outcomes: dict[str, ModelOutcome] = {}
    tasks = []
    for spec in selected:
        key, fields = model_key(spec, fingerprint(spec, method=fingerprint_method), settings)
        if target.is_complete(spec, key, wanted_raw):
            outcomes[spec] = ModelOutcome(spec, "skipped")
            continue
        tasks.append(
            ScanTask(
                spec=spec,
                store=str(target.path),
                key=key,
                key_fields=fields,
                loader=loader,
                extract_kwargs={
                    "kernel_size": kernel_size,
                    "example_inputs": example_inputs,
                    "depth": depth,
                    "trust_pickle": trust_pickle,
                },
                measure_kwargs={
                    "eps": eps,
                    "definition": definition,
                    "normalize": normalize,
                    "nan_policy": nan_policy,
                    "device": device,
                },
                raw_dtype=wanted_raw,
                cwd=str(Path.cwd()),
            )
        )
    logger.info(
        "scan: %s selected, %d already complete, %d to scan with %r",
        plural(len(selected), "spec"),
        len(outcomes),
        len(tasks),
        engine,
    )
    by_spec = {task.spec: task for task in tasks}
    results = engine.map(run_task, tasks)
    for result in progress_bar(results, total=len(tasks), desc="scan", enabled=progress):
        outcome = _outcome(result, by_spec, target)
        outcomes[outcome.spec] = outcome
        if callback is not None:
            callback(outcome)
    for task in tasks:
        if task.spec not in outcomes:  # an engine that ended early: never report success
            outcomes[task.spec] = _outcome(Lost(task, "no result came back"), by_spec, target)
    return ScanSummary(str(target.path), tuple(outcomes[spec] for spec in selected))


def _outcome(result: TaskResult | Lost, by_spec: dict[str, ScanTask], store: Store) -> ModelOutcome:
    if isinstance(result, TaskResult):
        for message in getattr(result, "warnings", ()):  # results of older workers lack it
            # One line each, as the command line prints warnings; named by model unless
            # the message already names it.
            named = message if result.spec in message else f"{result.spec}: {message}"
            logger.warning("%s", named)
        return ModelOutcome(result.spec, result.status, result.error, result.seconds)
    task: ScanTask = result.item
    entry = store.entry(task.spec)
    if entry is not None and entry.status == "ok" and entry.key == task.key:
        return ModelOutcome(task.spec, "ok", "", entry.seconds)  # done, only the reply was lost
    error = f"lost by the executor: {result.error}"
    store.commit(failure_entry(task, error))
    return ModelOutcome(task.spec, "failed", error)
