"""A folder of per-model results that survives crashes: the filter store.

Layout::

    STORE/
      filterstats-store.json         format marker and version
      manifest/<id>.json             one entry per model spec: status, key, error, files
      layers/<id>-<key>.parquet      the model's FilterReport (one row per conv layer)
      filters/<id>-<key>.parquet     optional raw kernels (see ``filterstats.scanning.raw``)

``<id>`` is a readable tail of the spec plus a hash of it; ``<key>`` hashes the
spec, its weights and the analysis settings (see ``filterstats.scanning.keys``).

Every file is written to a temporary name in its own folder, flushed to disk,
then renamed over its final name (``os.replace``, atomic on POSIX and Windows
file systems). A model's manifest entry is written last and is the commit
point: readers use only the data files that an ``ok`` entry names, so a process
killed at any moment leaves either the old complete result or the new one,
never a partial or a duplicated model. Left-over temporary files and data files
no entry names are removed when that model is scanned again.

One scan at a time should work on a given spec; disjoint shards of one spec list
may write to one store concurrently (from several machines on a shared file
system too).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from filterstats._optional import require

__all__ = ["STORE_VERSION", "Store", "StoreEntry", "open_filters", "open_store"]

logger = logging.getLogger(__name__)

#: Version of the store layout; bumped when files or manifest fields change meaning.
STORE_VERSION = 1

_MARKER = "filterstats-store.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class StoreEntry:
    """The manifest entry of one model spec.

    Attributes:
        spec: The model spec, as scanned (also the ``model`` column of its rows).
        status: ``"ok"`` or ``"failed"``.
        key: Hash of spec, weights fingerprint and settings (see ``key_fields``).
        key_fields: What ``key`` hashes.
        error: ``"ExceptionType: message"`` of a failure; empty when ok.
        traceback: Last lines of the failure's traceback.
        layers_file: File name of the layer table under ``layers/``.
        filters_file: File name of the raw kernels under ``filters/``; empty if none.
        raw_dtype: ``"float16"``/``"float32"`` of the raw kernels; empty if none.
        n_rows: Rows of the layer table (measured and skipped layers).
        n_measured: Measured layers.
        n_filters: Kernels in the measured layers.
        seconds: Wall time spent on the model, loading included.
        finished: When the entry was written (ISO 8601, UTC).
        host: Machine that wrote it.
    """

    spec: str
    status: str
    key: str
    key_fields: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    traceback: str = ""
    layers_file: str = ""
    filters_file: str = ""
    raw_dtype: str = ""
    n_rows: int = 0
    n_measured: int = 0
    n_filters: int = 0
    seconds: float = 0.0
    finished: str = ""
    host: str = ""


def entry_id(spec: str) -> str:
    """File-name-safe identifier of a spec: its readable tail and a hash.

    Args:
        spec: A model spec.

    Returns:
        E.g. ``"ckpts_resnet18.pt-3f2a9c0d1e"``.
    """
    digest = hashlib.sha1(spec.encode(), usedforsecurity=False).hexdigest()[:10]
    return f"{_UNSAFE.sub('_', spec)[-40:].lstrip('._')}-{digest}"


def _fsync_replace(temporary: Path, target: Path) -> None:
    with temporary.open("rb") as file:
        os.fsync(file.fileno())
    temporary.replace(target)


@contextlib.contextmanager
def _atomic(target: Path) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``target``; on success flush it and rename it over."""
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with temporary.open("wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)


class Store:
    """A filter store folder (see the module docs for its layout and guarantees).

    Args:
        path: The folder.
        create: Create it (and its marker file) if missing; otherwise it must exist.

    Raises:
        FileNotFoundError: ``path`` is not a store and ``create`` is ``False``.
        ValueError: ``path`` holds a store of a newer layout.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        self.path = Path(path).absolute()
        marker = self.path / _MARKER
        if not marker.is_file():
            if not create:
                raise FileNotFoundError(
                    f"{str(path)!r} is not a filterstats store (no {_MARKER}); create one with "
                    "filterstats.scanning.scan(specs, store=...)."
                )
            if self.path.exists() and not self.path.is_dir():
                raise NotADirectoryError(f"`store` must be a folder, got the file {str(path)!r}.")
            for folder in ("manifest", "layers", "filters"):
                (self.path / folder).mkdir(parents=True, exist_ok=True)
            with _atomic(marker) as file:
                file.write(
                    json.dumps(
                        {"format": "filterstats-store", "store_version": STORE_VERSION}
                    ).encode()
                )
        version = int(json.loads(marker.read_text(encoding="utf-8")).get("store_version", 0))
        if version > STORE_VERSION:
            raise ValueError(
                f"the store {str(path)!r} has layout version {version}, newer than this "
                f"filterstats ({STORE_VERSION}); upgrade: pip install -U filterstats"
            )

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # ---------------------------------------------------------------- manifest
    def _manifest_file(self, spec: str) -> Path:
        return self.path / "manifest" / f"{entry_id(spec)}.json"

    def entry(self, spec: str) -> StoreEntry | None:
        """The manifest entry of ``spec``, or ``None`` if it was never finished.

        Args:
            spec: A model spec.

        Returns:
            The entry, or ``None``.
        """
        return self._read_entry(self._manifest_file(spec), spec)

    def _read_entry(self, path: Path, spec: str | None = None) -> StoreEntry | None:
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:  # not ours, or damaged outside filterstats
            logger.warning("ignoring unreadable manifest entry %s: %s", path, error)
            return None
        known = {f.name for f in fields(StoreEntry)}
        entry = StoreEntry(**{k: v for k, v in payload.items() if k in known})
        return None if spec is not None and entry.spec != spec else entry

    def entries(self) -> list[StoreEntry]:
        """All manifest entries, ordered by spec.

        Returns:
            Entries of finished models, ok and failed.
        """
        found = (self._read_entry(p) for p in sorted((self.path / "manifest").glob("*.json")))
        return sorted((e for e in found if e is not None), key=lambda e: e.spec)

    def is_complete(self, spec: str, key: str, raw_dtype: str | None) -> bool:
        """Whether ``spec`` is stored ok under ``key`` (with raw kernels if asked).

        Args:
            spec: A model spec.
            key: The key a scan would write now.
            raw_dtype: Raw kernels wanted in this dtype; ``None``: not wanted.

        Returns:
            ``True`` when a re-run can skip the model.
        """
        entry = self.entry(spec)
        if entry is None or entry.status != "ok" or entry.key != key:
            return False
        return raw_dtype is None or entry.raw_dtype == raw_dtype

    # ---------------------------------------------------------------- writing
    def data_file(self, folder: str, spec: str, key: str) -> Path:
        """Where a data file of ``spec`` under ``key`` goes.

        Args:
            folder: ``"layers"`` or ``"filters"``.
            spec: A model spec.
            key: Its key.

        Returns:
            ``STORE/<folder>/<id>-<key>.parquet``.
        """
        return self.path / folder / f"{entry_id(spec)}-{key}.parquet"

    def write_file(self, target: Path, write: Callable[[IO[bytes]], Any]) -> Any:
        """Write ``target`` atomically: ``write(file)`` on a temporary file, then rename.

        Args:
            target: Final path inside the store.
            write: Writes the content to the open binary file.

        Returns:
            What ``write`` returned.
        """
        with _atomic(target) as file:
            return write(file)

    def write_report(self, target: Path, report: Any) -> None:
        """Write a [`FilterReport`][filterstats.FilterReport] to ``target`` atomically.

        Args:
            target: Final path inside the store.
            report: The report; read back with ``filterstats.read_report``.
        """
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            report.to_parquet(temporary)
            _fsync_replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)

    def commit(self, entry: StoreEntry) -> None:
        """Write a manifest entry (the commit point), then drop files it replaced.

        Args:
            entry: The new entry of ``entry.spec``.
        """
        payload = json.dumps(asdict(entry), indent=1, allow_nan=True)
        self.write_file(self._manifest_file(entry.spec), lambda f: f.write(payload.encode()))
        self.clean(entry.spec)

    def clean(self, spec: str) -> None:
        """Remove temporary files of ``spec`` and data files its entry does not name.

        Only ``spec``'s own files are touched, so concurrent scans of other specs
        are safe.

        Args:
            spec: A model spec.
        """
        entry = self.entry(spec)
        keep = {entry.layers_file, entry.filters_file} if entry and entry.status == "ok" else set()
        prefix = entry_id(spec)
        for folder in ("layers", "filters", "manifest"):
            for path in (self.path / folder).glob(f"*{prefix}*.tmp"):
                path.unlink(missing_ok=True)
            if folder != "manifest":
                for path in (self.path / folder).glob(f"{prefix}-*.parquet"):
                    if path.name not in keep:
                        path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- reading
    def _ok_entries(self, models: Sequence[str] | None) -> list[StoreEntry]:
        entries = [e for e in self.entries() if e.status == "ok"]
        if models is not None:
            wanted = set(models)
            entries = [e for e in entries if e.spec in wanted]
        return entries

    def read_layers(self, *, models: Sequence[str] | None = None) -> Any:
        """The layer rows of every ``ok`` model as one pandas DataFrame.

        Args:
            models: Only these specs; ``None``: all.

        Returns:
            A DataFrame with the columns of
            [`FilterReport.to_pandas`][filterstats.FilterReport.to_pandas], models
            ordered by spec, layers in module order; ``.attrs["filterstats"]`` holds
            the analysis parameters when all models share them.
        """
        from filterstats.results import FilterReport, read_report

        reports, params = [], []
        for entry in self._ok_entries(models):
            report = read_report(self._existing(self.path / "layers" / entry.layers_file, entry))
            reports.append(report)
            params.append(asdict(report.params))
        # One report of all models: columns of every metric any of them holds (models
        # scanned by an older version lack newer metrics: NaN there).
        frame = FilterReport.concat(reports).to_pandas()
        if not (params and all(p == params[0] for p in params)):
            frame.attrs.pop("filterstats", None)  # the models were measured differently
        return frame

    def read_filters(
        self, *, models: Sequence[str] | None = None, columns: Sequence[str] | None = None
    ) -> Any:
        """The raw kernels of every ``ok`` model that has them, as a DataFrame.

        Args:
            models: Only these specs; ``None``: all.
            columns: Only these columns (see ``filterstats.scanning.raw``); ``None``: all.

        Returns:
            A DataFrame, one row per kernel; ``model``/``layer`` are categorical.
            ``frame[[f"w{i}" for i in range(9)]].to_numpy().reshape(-1, 3, 3)``
            gives the 3x3 kernels.
        """
        pa = require("pyarrow", extra="pandas")
        pq = require("pyarrow.parquet", extra="pandas")
        tables = []
        for entry in self._ok_entries(models):
            if entry.filters_file:
                path = self._existing(self.path / "filters" / entry.filters_file, entry)
                table = pq.read_table(path, columns=list(columns) if columns else None)
                tables.append(table.replace_schema_metadata(None))
        if not tables:
            raise ValueError(
                f"the store {str(self.path)!r} holds no raw filters; scan with "
                "raw_filters=True (CLI: --raw-filters)."
            )
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()

    def filter_paths(self, models: Sequence[str] | None = None) -> list[Path]:
        """The raw-filter file of each model, for functions that stream over models.

        ``fs.filter_divergence(store.filter_paths(robust), store.filter_paths(normal))``
        and ``fs.pca_basis(store.filter_paths())`` read one model's file at a time.

        Args:
            models: These specs, in this order (pairs stay aligned); ``None``: every
                ``ok`` model with raw filters, in store order.

        Returns:
            One ``.parquet`` path per model.

        Raises:
            ValueError: A requested spec is not in the store, failed, or has no raw
                filters (scan it with ``raw_filters=True``).
        """
        entries = {e.spec: e for e in self._ok_entries(None)}
        if models is None:
            chosen = [e for e in entries.values() if e.filters_file]
        else:
            chosen = []
            for spec in models:
                entry = entries.get(spec)
                if entry is None or not entry.filters_file:
                    why = "has no ok entry" if entry is None else "has no raw filters"
                    raise ValueError(
                        f"model {spec!r} {why} in the store {str(self.path)!r}; scan it with "
                        "raw_filters=True (CLI: --raw-filters)."
                    )
                chosen.append(entry)
        return [self._existing(self.path / "filters" / e.filters_file, e) for e in chosen]

    def _existing(self, path: Path, entry: StoreEntry) -> Path:
        if not path.is_file():
            raise FileNotFoundError(
                f"the store entry of {entry.spec!r} names {path.name}, which is missing; "
                "files were removed by hand. Scan the spec again to rebuild it."
            )
        return path


def open_store(path: str | os.PathLike[str], *, models: Sequence[str] | None = None) -> Any:
    """Every layer of every successfully scanned model, as a pandas DataFrame.

    Needs ``pip install 'filterstats[pandas]'``.

    Args:
        path: A store folder written by [`scan`][filterstats.scanning.scan].
        models: Only these specs; ``None``: all.

    Returns:
        A DataFrame, one row per conv layer (``model`` holds the spec), equal to
        ``FilterReport.concat([analyze(spec, label=spec) ...]).to_pandas()`` of the
        same models in spec order.

    Examples:
        >>> import filterstats as fs  # doctest: +SKIP
        >>> frame = fs.open_store("results/")  # doctest: +SKIP
        >>> frame.groupby("model")["diversity"].mean()  # doctest: +SKIP
    """
    return Store(path).read_layers(models=models)


def open_filters(
    path: str | os.PathLike[str],
    *,
    models: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
) -> Any:
    """The raw kernels stored by ``scan(..., raw_filters=True)``, as a DataFrame.

    Args:
        path: A store folder.
        models: Only these specs; ``None``: all.
        columns: Only these columns; ``None``: all (see ``filterstats.scanning.raw``).

    Returns:
        One row per kernel: model, layer, conv_depth, conv_depth_norm, out_index,
        in_index, w0 ... w{k*k-1}.
    """
    return Store(path).read_filters(models=models, columns=columns)
