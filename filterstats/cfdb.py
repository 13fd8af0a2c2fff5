"""CNN Filter DB files: read and write the authors' filter-database layout (extra ``cfdb``).

Gavrikov & Keuper, "CNN Filter DB: An Empirical Investigation of Trained Convolutional
Filters" (CVPR 2022, arXiv:2203.15331; data: doi 10.5281/zenodo.6371680), and the
robustness data of "Adversarial Robustness through the Lens of Convolutional Filters"
(CVPR-W 2022, doi 10.5281/zenodo.6414075), store kernels in one HDF5 file:

* ``/filters``: every 3x3 kernel as a row, ``(N, 9)`` float32 (the README; the authors'
  pipeline wrote ``(N, 3, 3)`` float64, and their notebooks read either with
  ``f["filters"][...].reshape(-1, 9)``). The README calls the dataset ``/filter``;
  their code reads ``/filters``. This module writes ``/filters`` and a hard link
  ``/filter`` to it (one dataset, both names) and reads either.
* ``/meta``: a pandas DataFrame written with ``DataFrame.to_hdf(path, "meta")``
  (PyTables, ``format="fixed"``), one row per layer. Its index is the MultiIndex
  ``[model_id, conv_depth, conv_depth_norm, layer_id]``; the columns that matter here
  are ``filter_ids`` (``"first:last"``, an *inclusive* range of ``/filters`` rows),
  ``in_channels`` (per group: the weight's second dimension), ``out_channels``,
  ``layer_depth`` (graph depth), ``model`` (the unique model label) and ``Name``, and
  model-level meta data: ``Training-Dataset``, ``Visual Category``, ``Task``,
  ``Robust``, ``producer``, ``op_set``, ``(3, 3) filters``, ... (see the CNN Filter DB
  README). Rows of one layer's kernels are ``out x in`` in C order.

Reading is safe: PyTables keeps the DataFrame's string columns as pickles, and
``pandas.read_hdf`` unpickles them, which can run code from a crafted file. This
module reads the layout with h5py and a restricted unpickler that builds only NumPy
arrays of plain values (strings, numbers, booleans, None) and refuses anything else;
``trust_pickle=True`` reads the meta table with pandas instead (only for files you
trust). Writing uses pandas and PyTables, so the authors' own
``pandas.read_hdf(path, "meta")`` reads the result.

Examples:
    >>> import filterstats as fs  # doctest: +SKIP
    >>> from filterstats import cfdb  # doctest: +SKIP
    >>> cfdb.write_cfdb("mine.h5", "results/")  # a scan store with raw filters  # doctest: +SKIP
    >>> db = cfdb.read_cfdb("dataset.h5")  # doctest: +SKIP
    >>> groups = db.groups("Training-Dataset")  # doctest: +SKIP
    >>> groups.divergence("cifar10", "imagenet")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import pickle
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from filterstats._files import atomic_target, check_output_file
from filterstats._optional import require
from filterstats._text import plural
from filterstats.distribution import DivergenceByDepth, filter_divergence
from filterstats.layers import ConvLayer, FilterSet
from filterstats.resolve import extract_filters

__all__ = [
    "FilterDB",
    "FilterDBError",
    "FilterGroups",
    "read_cfdb",
    "write_cfdb",
]

#: The kernels' dataset: the name the authors' code reads, and the README's name.
FILTERS = "filters"
FILTERS_ALIAS = "filter"
META = "meta"
#: Index levels of the authors' meta table, in their order.
INDEX = ("model_id", "conv_depth", "conv_depth_norm", "layer_id")
#: Root attribute holding how filterstats wrote the file (JSON).
PROVENANCE = "filterstats"

MetaValue = str | int | float | bool | None


class FilterDBError(ValueError):
    """A file that is not (or not a readable) CNN Filter DB file; the message says why."""


# =========================================================================== reading


@dataclass(frozen=True, eq=False)
class FilterDB:
    """A CNN Filter DB file: its meta table in memory, the kernels read on demand.

    Attributes:
        path: The file.
        meta: Every meta column and index level, one value per layer row (read-only
            NumPy arrays; strings and mixed columns have ``dtype=object``).
        kernel_size: Spatial size of the stored kernels, ``(3, 3)``.
        n_filters: Rows of ``/filters``.
        model_column: The meta column that names models (``model``, else ``Name``,
            else ``model_id``).
        provenance: How filterstats wrote the file (``{}`` for other files).
    """

    path: Path
    meta: Mapping[str, np.ndarray]
    kernel_size: tuple[int, ...]
    n_filters: int
    model_column: str
    provenance: Mapping[str, Any] = field(default_factory=dict)
    _ranges: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64), repr=False)

    def __len__(self) -> int:
        return len(self._ranges)

    def __repr__(self) -> str:
        return (
            f"FilterDB({self.path.name}: {plural(len(self.models), 'model')}, "
            f"{plural(len(self), 'layer')}, "
            f"{self.n_filters:,} kernels {'x'.join(map(str, self.kernel_size))}; "
            f"columns: {', '.join(list(self.meta)[:12])}{', ...' if len(self.meta) > 12 else ''})"
        )

    @property
    def columns(self) -> tuple[str, ...]:
        """Names of the meta columns (index levels first)."""
        return tuple(self.meta)

    @property
    def models(self) -> tuple[str, ...]:
        """Model labels in file order, each once."""
        return tuple(dict.fromkeys(str(value) for value in self.meta[self.model_column]))

    def values(self, column: str) -> tuple[Any, ...]:
        """The distinct values of a column, in first-seen order (missing values left out).

        Args:
            column: A meta column or index level.

        Returns:
            The values.
        """
        return tuple(dict.fromkeys(_plain(v) for v in self._column(column) if not _missing(v)))

    def rows(self, where: Mapping[str, Any] | None = None) -> np.ndarray:
        """Row numbers of the layers whose meta values match ``where``.

        Args:
            where: ``{column: value}``; a value may be a list, tuple or set of accepted
                values, or a function of the column's array returning a boolean mask.
                ``None``: every row.

        Returns:
            Row numbers, ascending.
        """
        mask = np.ones(len(self), dtype=bool)
        for column, wanted in (where or {}).items():
            values = self._column(column)
            if callable(wanted):
                mask &= np.asarray(wanted(values), dtype=bool)
            elif isinstance(wanted, (list, tuple, set, frozenset)):
                mask &= np.array([v in wanted for v in values], dtype=bool)
            else:
                mask &= np.array([v == wanted for v in values], dtype=bool)
        return np.flatnonzero(mask)

    def filtersets(
        self, where: Mapping[str, Any] | None = None, *, models: Sequence[str] | None = None
    ) -> list[FilterSet]:
        """One [`FilterSet`][filterstats.FilterSet] per model, holding its matching layers.

        Each layer's weight is rebuilt as ``(out_channels, n / out_channels, kH, kW)``
        from its ``filter_ids`` rows; ``conv_depth``, ``conv_depth_norm`` and
        ``depth`` (``layer_depth``) come from the meta table, so
        [`filter_divergence`][filterstats.filter_divergence] bins them by depth and
        [`pca_basis`][filterstats.pca_basis] pools them.

        Args:
            where: Row selection, as in [`rows`][filterstats.cfdb.FilterDB.rows].
            models: Only these model labels, in this order; ``None``: all, file order.

        Returns:
            The sets (models without a matching layer are left out).

        Raises:
            KeyError: A model label that the file does not hold.
        """
        if models is not None:
            unknown = [m for m in models if m not in self.models]
            if unknown:
                raise KeyError(
                    f"no model {unknown[:5]} in {self.path.name}; models: "
                    f"{list(self.models)[:8]}{' ...' if len(self.models) > 8 else ''}"
                )
        return self._load(self.rows(where).tolist(), models)

    def _load(
        self, selected: Sequence[int], models: Sequence[str] | None = None
    ) -> list[FilterSet]:
        """FilterSets of the given rows, one per model (file order, or ``models``')."""
        labels = self._column(self.model_column)
        by_model: dict[str, list[int]] = {}
        for row in selected:
            by_model.setdefault(str(labels[row]), []).append(int(row))
        order = list(by_model) if models is None else list(models)
        wanted = [(model, by_model[model]) for model in order if model in by_model]
        h5py = require("h5py", extra="cfdb")
        with h5py.File(self.path, "r") as file:
            kernels = _kernels_dataset(file, self.path)
            return [self._filterset(kernels, model, rows) for model, rows in wanted]

    def filterset(self, model: str) -> FilterSet:
        """Every layer of one model.

        Args:
            model: A label of [`models`][filterstats.cfdb.FilterDB.models].

        Returns:
            The model's [`FilterSet`][filterstats.FilterSet].
        """
        return self.filtersets(models=[model])[0]

    def groups(
        self, by: str | Sequence[str], *, where: Mapping[str, Any] | None = None
    ) -> FilterGroups:
        """Models grouped by the values of one or more meta columns.

        A model-level column (``Training-Dataset``, ``Task``, ``Robust``) puts each
        model in one group; a layer-level one (``conv_depth``) splits its layers.
        Rows with a missing value in ``by`` are left out.

        Args:
            by: Column name(s); with several, groups are keyed by value tuples.
            where: Further row selection, as in [`rows`][filterstats.cfdb.FilterDB.rows].

        Returns:
            A [`FilterGroups`][filterstats.cfdb.FilterGroups]: value -> FilterSets.
        """
        columns = (by,) if isinstance(by, str) else tuple(by)
        arrays = [self._column(column) for column in columns]
        selected = set(self.rows(where).tolist())
        keys: dict[Any, list[int]] = {}
        for row in range(len(self)):
            key = tuple(_plain(array[row]) for array in arrays)
            if row in selected and not any(_missing(v) for v in key):
                keys.setdefault(key[0] if len(key) == 1 else key, []).append(row)
        groups = tuple((key, tuple(self._load(rows))) for key, rows in keys.items())
        return FilterGroups(by=columns, groups=groups)

    def to_pandas(self) -> Any:
        """The meta table as a pandas DataFrame (index levels as columns).

        Returns:
            One row per layer, ``filter_ids`` as stored.
        """
        pd = require("pandas", extra="pandas")
        return pd.DataFrame({name: list(values) for name, values in self.meta.items()})

    # ----------------------------------------------------------------- internals
    def _column(self, column: str) -> np.ndarray:
        if column not in self.meta:
            raise KeyError(f"no column {column!r} in {self.path.name}; columns: {list(self.meta)}")
        return self.meta[column]

    def _filterset(self, kernels: Any, model: str, rows: list[int]) -> FilterSet:
        layers = []
        for row in rows:
            start, stop = (int(v) for v in self._ranges[row])
            values = np.asarray(kernels[start:stop], dtype=np.float32).reshape(stop - start, -1)
            out = int(self.meta["out_channels"][row])
            width = math.prod(self.kernel_size)
            if values.shape[1] != width or out <= 0 or (stop - start) % out:
                raise FilterDBError(
                    f"{self.path.name}: layer row {row} ({model}) holds {stop - start} kernels "
                    f"of {values.shape[1]} values, which do not form {out} output filters of "
                    f"{'x'.join(map(str, self.kernel_size))} kernels."
                )
            weight = torch.from_numpy(values).reshape(out, -1, *self.kernel_size)
            layers.append(
                ConvLayer(
                    name=self._layer_name(row),
                    module_type="cfdb",
                    weight=weight,
                    in_channels=int(weight.shape[1]),
                    out_channels=out,
                    groups=None,
                    kernel_size=self.kernel_size,
                    depth=self._optional_int("layer_depth", row),
                    conv_depth=self._optional_int("conv_depth", row),
                    conv_depth_norm=self._optional_float("conv_depth_norm", row),
                )
            )
        return FilterSet(tuple(layers), (), "cfdb", model, kernel_size=tuple(self.kernel_size))

    def _layer_name(self, row: int) -> str:
        if "layer" in self.meta and not _missing(self.meta["layer"][row]):
            return str(self.meta["layer"][row])
        if "layer_id" in self.meta:
            return f"layer{int(self.meta['layer_id'][row])}"
        return f"row{row}"

    def _optional_int(self, column: str, row: int) -> int | None:
        if column not in self.meta or _missing(self.meta[column][row]):
            return None
        value = int(self.meta[column][row])
        return None if value < 0 else value

    def _optional_float(self, column: str, row: int) -> float | None:
        if column not in self.meta or _missing(self.meta[column][row]):
            return None
        return float(self.meta[column][row])


@dataclass(frozen=True, eq=False)
class FilterGroups(Mapping[Any, tuple[FilterSet, ...]]):
    """FilterSets grouped by meta values: ``groups[value]`` is a tuple of FilterSets.

    Attributes:
        by: The grouping columns.
        groups: ``(value, filtersets)`` pairs in first-seen order.
    """

    by: tuple[str, ...]
    groups: tuple[tuple[Any, tuple[FilterSet, ...]], ...]

    def __getitem__(self, key: Any) -> tuple[FilterSet, ...]:
        for value, sets in self.groups:
            if value == key:
                return sets
        raise KeyError(
            f"no group {key!r} for {', '.join(self.by)}; groups: {[v for v, _ in self.groups]}"
        )

    def __iter__(self) -> Iterator[Any]:
        return iter(value for value, _ in self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __repr__(self) -> str:
        parts = [f"{value!r}: {plural(len(sets), 'model')}" for value, sets in self.groups[:10]]
        more = f", ... {len(self.groups) - 10} more" if len(self.groups) > 10 else ""
        return f"FilterGroups(by {', '.join(self.by)}: {', '.join(parts)}{more})"

    def divergence(self, a: Any, b: Any, **options: Any) -> DivergenceByDepth:
        """The kernel-distribution shift between two groups, per depth bin.

        Args:
            a: A group's value.
            b: Another group's value.
            **options: Passed to [`filter_divergence`][filterstats.filter_divergence]
                (``basis``, ``bins``, ``value_range``, ``depth_bins``, ...).

        Returns:
            [`filter_divergence`][filterstats.filter_divergence]``(groups[a], groups[b])``
            labelled with the two values.
        """
        options.setdefault("labels", (str(a), str(b)))
        return filter_divergence(list(self[a]), list(self[b]), **options)


def read_cfdb(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> FilterDB:
    """Open a CNN Filter DB file (the authors' or one written by ``write_cfdb``).

    Reads the meta table; kernels are read when FilterSets are asked for.

    Args:
        path: The ``.h5`` file.
        trust_pickle: Read the meta table with ``pandas.read_hdf``, which unpickles
            its object columns and can run code from a crafted file. Only for files
            you trust whose meta table the safe reader refuses.

    Returns:
        A [`FilterDB`][filterstats.cfdb.FilterDB].

    Raises:
        FilterDBError: The file is not HDF5, lacks ``/filters`` or ``/meta``, its
            meta table is not a pandas frame, holds values the safe reader refuses,
            or its ``filter_ids`` do not fit ``/filters``.
        FileNotFoundError: There is no such file.
    """
    h5py = require("h5py", extra="cfdb")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no CNN Filter DB file at {path}")
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise FilterDBError(f"{path} is not an HDF5 file ({error}).") from None
    with file:
        kernels = _kernels_dataset(file, path)
        n_filters = int(kernels.shape[0])
        kernel_size = _kernel_size(file, kernels, path)
        provenance = _provenance(file)
        if META not in file:
            raise FilterDBError(
                f"{path} has no /{META} table: a CNN Filter DB file holds the kernels' layer "
                "meta data there (a pandas DataFrame written with to_hdf(path, 'meta'))."
            )
        if not trust_pickle:
            meta = _read_fixed_frame(file[META], path)
    if trust_pickle:
        meta = _read_with_pandas(path)
    for column in ("filter_ids", "out_channels"):
        if column not in meta:
            raise FilterDBError(
                f"{path}: the /{META} table has no {column!r} column; columns: {list(meta)[:20]}"
            )
    ranges = _parse_ranges(meta["filter_ids"], n_filters, path)
    model_column = next(c for c in ("model", "Name", "model_id") if c in meta or c == "model_id")
    if model_column not in meta:
        meta["model_id"] = np.zeros(len(ranges), dtype=np.int64)
    frozen = {name: _read_only(values) for name, values in meta.items()}
    return FilterDB(
        path=path,
        meta=MappingProxyType(frozen),
        kernel_size=kernel_size,
        n_filters=n_filters,
        model_column=model_column,
        provenance=MappingProxyType(provenance),
        _ranges=_read_only(ranges),
    )


def _kernels_dataset(file: Any, path: Path) -> Any:
    for name in (FILTERS, FILTERS_ALIAS):
        if name in file:
            kernels = file[name]
            if getattr(kernels, "ndim", 0) not in (2, 3) or not np.issubdtype(
                kernels.dtype, np.floating
            ):
                raise FilterDBError(
                    f"{path}: /{name} must hold float kernels as rows, (N, 9) or (N, 3, 3); "
                    f"got {getattr(kernels, 'shape', '?')} {getattr(kernels, 'dtype', '?')}."
                )
            return kernels
    raise FilterDBError(
        f"{path} has no /{FILTERS} (or /{FILTERS_ALIAS}) dataset: not a CNN Filter DB file. "
        f"It holds: {sorted(file)[:10]}."
    )


def _kernel_size(file: Any, kernels: Any, path: Path) -> tuple[int, ...]:
    recorded = _provenance(file).get("kernel_size")
    if recorded:
        size = tuple(int(k) for k in recorded)
    elif kernels.ndim == 3:
        size = (int(kernels.shape[1]), int(kernels.shape[2]))
    else:
        side = math.isqrt(int(kernels.shape[1]))
        size = (side, side)
    if math.prod(size) != math.prod(kernels.shape[1:]):
        raise FilterDBError(f"{path}: kernels of shape {kernels.shape[1:]} are not {size}.")
    return size


def _provenance(file: Any) -> dict[str, Any]:
    raw = file.attrs.get(PROVENANCE)
    if raw is None:
        return {}
    text = raw.decode("utf-8") if isinstance(raw, (bytes, np.bytes_)) else str(raw)
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _parse_ranges(filter_ids: np.ndarray, n_filters: int, path: Path) -> np.ndarray:
    """``"first:last"`` (inclusive) per row as ``[start, stop)`` pairs, checked."""
    ranges = np.zeros((len(filter_ids), 2), dtype=np.int64)
    for row, text in enumerate(filter_ids):
        try:
            first, last = (int(part) for part in str(text).split(":"))
        except ValueError:
            raise FilterDBError(
                f"{path}: filter_ids of layer row {row} is {text!r}, not 'first:last'."
            ) from None
        if not 0 <= first <= last < n_filters:
            raise FilterDBError(
                f"{path}: filter_ids of layer row {row} is {text!r}, outside the "
                f"{n_filters} rows of /{FILTERS}."
            )
        ranges[row] = (first, last + 1)
    return ranges


def _read_only(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    values.setflags(write=False)
    return values


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python value it holds (``np.True_`` -> ``True``)."""
    return value.item() if isinstance(value, np.generic) else value


# ------------------------------------------------------ the pandas fixed layout


#: What the meta table's pickles may name: NumPy's array and scalar reconstruction.
_PICKLE_ALLOWED = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol 2 pickles bytes
    }
)


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays of plain values and nothing that could run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        if module.startswith("numpy") and "multiarray" in module:
            # Files written under numpy 1 name numpy.core, under numpy 2 numpy._core.
            try:
                multiarray = importlib.import_module("numpy._core.multiarray")
            except ModuleNotFoundError:
                multiarray = importlib.import_module("numpy.core.multiarray")
            return getattr(multiarray, name)
        return super().find_class(module, name)


_PLAIN = (str, bytes, int, float, bool, type(None), np.bool_, np.number, np.str_, np.bytes_)


def _unpickle(data: bytes, where: str, path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core under numpy 2
            return _PlainUnpickler(io.BytesIO(data)).load()
    except Exception as error:
        raise FilterDBError(
            f"{path}: {where} holds pickled data that filterstats does not load "
            f"({type(error).__name__}: {error}). Loading it could run code; if you trust "
            "the file, read_cfdb(path, trust_pickle=True) reads it with pandas."
        ) from None


def _attr(node: Any, name: str, path: Path) -> Any:
    """A PyTables attribute: plain values as they are, pickled ones (None) loaded safely."""
    value = node.attrs.get(name)
    if isinstance(value, (bytes, np.bytes_)):
        raw = bytes(value)
        if raw == b"N." or raw[:1] == b"\x80":  # PyTables pickles what is not a string
            return _unpickle(raw, f"the attribute {name!r} of {node.name}", path)
        return raw.decode("utf-8")
    return value


def _array(node: Any, path: Path) -> np.ndarray:
    """One array of the fixed layout, as pandas wrote it (object arrays unpickled)."""
    if _attr(node, "CLASS", path) == "VLARRAY":
        if _attr(node, "PSEUDOATOM", path) != "object" or len(node) != 1:
            raise FilterDBError(
                f"{path}: {node.name} is a variable-length array pandas does not write."
            )
        value = _unpickle(np.asarray(node[0]).tobytes(), node.name, path)
        if not isinstance(value, np.ndarray) or value.dtype != object:
            raise FilterDBError(f"{path}: {node.name} does not hold an object array.")
        for item in value.flat:
            if not isinstance(item, _PLAIN):
                raise FilterDBError(
                    f"{path}: {node.name} holds a {type(item).__name__}; only strings, numbers, "
                    "booleans and missing values are read (trust_pickle=True reads any)."
                )
    else:
        value = np.asarray(node[()])
        if node.id.get_type().get_class() == _h5t_bitfield():  # how PyTables stores bool
            value = value.astype(bool)
    if _attr(node, "transposed", path):
        value = value.T
    kind = _attr(node, "kind", path)
    if kind == "string" or value.dtype.kind == "S":
        value = np.array([_text(item) for item in value.ravel()], dtype=object).reshape(value.shape)
    elif kind not in (None, "integer", "float", "bool", "object", "string"):
        raise FilterDBError(
            f"{path}: {node.name} holds values of kind {kind!r}, which the safe reader does "
            "not read (trust_pickle=True reads them with pandas)."
        )
    return np.asarray(value)


def _h5t_bitfield() -> int:
    h5py = require("h5py", extra="cfdb")
    return int(h5py.h5t.BITFIELD)


def _text(item: Any) -> Any:
    return item.decode("utf-8") if isinstance(item, (bytes, np.bytes_)) else item


def _read_fixed_frame(group: Any, path: Path) -> dict[str, np.ndarray]:
    """The columns (index levels first) of a DataFrame that pandas wrote with format="fixed"."""
    kind = _attr(group, "pandas_type", path)
    if kind != "frame":
        hint = (
            " It was written with format='table'; read_cfdb(path, trust_pickle=True) reads it."
            if kind == "frame_table"
            else ""
        )
        raise FilterDBError(
            f"{path}: /{META} is not a DataFrame written by pandas' to_hdf (pandas_type "
            f"{kind!r}).{hint}"
        )
    try:
        columns: dict[str, np.ndarray] = {}
        variety = _attr(group, "axis1_variety", path)
        if variety == "multi":
            for level in range(int(_attr(group, "axis1_nlevels", path))):
                values = _array(group[f"axis1_level{level}"], path)
                codes = np.asarray(group[f"axis1_label{level}"][()]).astype(np.int64)
                name = _attr(group[f"axis1_level{level}"], "name", path) or f"level_{level}"
                picked = np.asarray(values, dtype=object)[np.clip(codes, 0, None)]
                if (codes < 0).any():
                    picked = np.where(codes < 0, math.nan, picked)
                columns[str(name)] = _tighten(picked)
        else:
            index = _array(group["axis1"], path)
            columns[str(_attr(group["axis1"], "name", path) or "index")] = index
        n_rows = len(next(iter(columns.values())))
        data: dict[str, np.ndarray] = {}
        for block in range(int(_attr(group, "nblocks", path))):
            items = _array(group[f"block{block}_items"], path)
            values = _array(group[f"block{block}_values"], path)  # (items, rows)
            if values.ndim == 1:  # one column as a 1-D array (pandas' string arrays)
                values = values.reshape(1, -1)
            if values.shape != (len(items), n_rows):
                raise FilterDBError(
                    f"{path}: /{META}/block{block}_values has shape {values.shape}, not "
                    f"{len(items)} columns of {n_rows} rows."
                )
            for position, name in enumerate(items):
                data[str(name)] = _tighten(values[position])
        for name in _array(group["axis0"], path):  # the frame's column order
            if str(name) in data:
                columns[str(name)] = data.pop(str(name))
        columns.update(data)
    except KeyError as error:
        raise FilterDBError(
            f"{path}: /{META} lacks a part of the pandas layout: {error}."
        ) from None
    return columns


def _tighten(values: np.ndarray) -> np.ndarray:
    """An object array of plain numbers as a numeric array; strings stay objects."""
    if values.dtype != object or not len(values):
        return values
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return values.astype(bool)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return values.astype(np.int64)
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in values) and not any(
        isinstance(v, bool) for v in values
    ):
        return values.astype(np.float64)
    return values


def _read_with_pandas(path: Path) -> dict[str, np.ndarray]:
    pd = require("pandas", extra="cfdb")
    require("tables", extra="cfdb")
    frame = pd.read_hdf(path, META)
    if not isinstance(frame, pd.DataFrame):
        raise FilterDBError(f"{path}: /{META} is not a DataFrame.")
    frame = frame.reset_index()
    return {str(name): frame[name].to_numpy() for name in frame.columns}


# =========================================================================== writing


@dataclass
class _Layer:
    model: str
    name: str
    conv_depth: int
    conv_depth_norm: float
    layer_depth: int
    in_channels: int
    out_channels: int
    start: int
    stop: int


def write_cfdb(
    path: str | os.PathLike[str],
    source: str | os.PathLike[str] | Mapping[str, FilterSet | nn.Module],
    *,
    meta: Mapping[str, Mapping[str, MetaValue]] | None = None,
    kernel_size: tuple[int, int] = (3, 3),
    models: Sequence[str] | None = None,
    overwrite: bool = False,
) -> FilterDB:
    """Write kernels in the CNN Filter DB layout, readable by the authors' notebooks.

    One meta row per layer (index ``[model_id, conv_depth, conv_depth_norm,
    layer_id]``; columns ``layer_depth``, ``in_channels``, ``out_channels``,
    ``filter_ids``, ``model``, ``Name``, ``layer`` (module path), ``producer``,
    ``"(3, 3) filters"``, then the ``meta`` columns), the kernels as ``(N, 9)``
    float32 rows of ``/filters`` (and its alias ``/filter``). ``model_id`` numbers
    the models in the order written. The file appears complete or not at all.

    Args:
        path: The ``.h5`` file to write.
        source: A scan store written with ``raw_filters=True`` (its raw kernels are
            streamed, a row group at a time: float16 stores become float32 exactly),
            or a mapping ``{label: FilterSet or nn.Module}`` (modules go through
            [`extract_filters`][filterstats.extract_filters]).
        meta: Model-level columns per label, e.g. ``{"net-a": {"Robust": True,
            "Training-Dataset": "cifar10"}}`` (strings, numbers, booleans, None);
            absent keys are missing values. They become the groups of
            [`FilterDB.groups`][filterstats.cfdb.FilterDB.groups].
        kernel_size: The kernels to write (the database holds 3x3); other layers are
            left out.
        models: Only these labels (store specs or mapping keys), in this order.
        overwrite: Replace an existing file.

    Returns:
        The written file, opened with [`read_cfdb`][filterstats.cfdb.read_cfdb].

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: No kernels to write, an unknown model, or a store without raw
            filters or with another kernel size.
        TypeError: A ``meta`` value that is not a plain value.
    """
    h5py = require("h5py", extra="cfdb")
    pd = require("pandas", extra="cfdb")
    require("tables", extra="cfdb")
    target = check_output_file(path, example="filters.h5")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it.")
    kernel_size = (int(kernel_size[0]), int(kernel_size[1]))
    meta = dict(meta or {})
    for label, columns in meta.items():
        for key, value in columns.items():
            if not isinstance(value, (str, int, float, bool, type(None))):
                raise TypeError(
                    f"`meta[{label!r}][{key!r}]` must be a string, number, boolean or None, "
                    f"got {type(value).__name__}."
                )
    from filterstats._version import __version__

    streams = _sources(source, kernel_size, models)
    width = math.prod(kernel_size)
    with atomic_target(target, example="filters.h5") as temporary:
        layers: list[_Layer] = []
        with h5py.File(temporary, "w") as file:
            kernels = file.create_dataset(
                FILTERS, shape=(0, width), maxshape=(None, width), dtype="float32",
                chunks=(max(1, min(1 << 16, (1 << 22) // (4 * width))), width),  # <= 4 MiB
            )  # fmt: skip
            for label, stream in streams:
                for name, info, values in stream:
                    start = int(kernels.shape[0])
                    kernels.resize(start + len(values), axis=0)
                    kernels[start:] = values
                    layers.append(
                        _Layer(label, name, **info, start=start, stop=start + len(values))
                    )
            if not layers:
                raise ValueError(
                    f"no {kernel_size} kernels to write: the source holds no such layer."
                )
            file[FILTERS_ALIAS] = kernels  # a hard link: the README's name, same data
            file.attrs[PROVENANCE] = np.bytes_(
                json.dumps(
                    {
                        "version": __version__,
                        "kernel_size": list(kernel_size),
                        "dtype": "float32",
                        "layout": "CNN Filter DB (Gavrikov & Keuper, CVPR 2022)",
                        "source": str(source)
                        if isinstance(source, (str, os.PathLike))
                        else "filtersets",
                    }
                )
            )
        frame = _meta_frame(pd, layers, meta, kernel_size)
        with warnings.catch_warnings():
            # Object columns are pickled by PyTables, as in the authors' own file.
            warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
            frame.to_hdf(temporary, key=META, mode="a", format="fixed")
    return read_cfdb(target)


def _meta_frame(
    pd: Any,
    layers: list[_Layer],
    meta: Mapping[str, Mapping[str, MetaValue]],
    size: tuple[int, int],
) -> Any:
    labels = list(dict.fromkeys(layer.model for layer in layers))
    model_id = {label: index for index, label in enumerate(labels)}
    per_model: dict[str, int] = {}
    layer_id: dict[str, int] = {}
    for layer in layers:
        per_model[layer.model] = per_model.get(layer.model, 0) + layer.stop - layer.start
    from filterstats._version import __version__

    index, rows = [], []
    for layer in layers:
        number = layer_id.get(layer.model, 0)
        layer_id[layer.model] = number + 1
        index.append((model_id[layer.model], layer.conv_depth, layer.conv_depth_norm, number))
        rows.append(
            {
                "layer_depth": layer.layer_depth,
                "in_channels": layer.in_channels,
                "out_channels": layer.out_channels,
                "filter_ids": f"{layer.start}:{layer.stop - 1}",
                "model": layer.model,
                "Name": layer.model,
                "layer": layer.name,
                "producer": f"filterstats {__version__}",
                f"{size} filters": per_model[layer.model],
            }
        )
    extra = list(dict.fromkeys(key for values in meta.values() for key in values))
    for row, layer in zip(rows, layers):
        for key in extra:
            row[key] = meta.get(layer.model, {}).get(key)
    frame = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=list(INDEX)))
    for key in extra:  # plain numpy columns: pandas' extension types do not fit to_hdf
        values = frame[key].tolist()
        if all(isinstance(v, bool) for v in values):
            frame[key] = np.array(values, dtype=bool)
        elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            frame[key] = np.array([math.nan if v is None else v for v in values], dtype=object)
    for key in ("filter_ids", "model", "Name", "layer", "producer"):
        frame[key] = np.array(frame[key].tolist(), dtype=object)
    return frame


LayerStream = Iterator[tuple[str, dict[str, Any], np.ndarray]]


def _sources(
    source: str | os.PathLike[str] | Mapping[str, FilterSet | nn.Module],
    kernel_size: tuple[int, int],
    models: Sequence[str] | None,
) -> list[tuple[str, LayerStream]]:
    if isinstance(source, (str, os.PathLike)):
        return _store_sources(Path(source), kernel_size, models)
    if not isinstance(source, Mapping):
        raise TypeError(
            f"`source` must be a scan store folder or a mapping {{label: FilterSet or model}}, "
            f"got {type(source).__name__}."
        )
    labels = list(source) if models is None else list(models)
    unknown = [label for label in labels if label not in source]
    if unknown:
        raise ValueError(f"`models` {unknown} are not in `source`; it has {list(source)[:8]}.")
    result = []
    for label in labels:
        # The one resolver: a module, state dict, path, spec or FilterSet.
        item = extract_filters(
            source[label], kernel_size=kernel_size, argument=f"source[{label!r}]"
        )
        result.append((str(label), _filterset_layers(item)))
    return result


def _filterset_layers(filterset: FilterSet) -> LayerStream:
    for layer in filterset:
        with torch.no_grad():
            weight = layer.weight.detach().to("cpu", torch.float32)
        yield (
            layer.name,
            _info(layer.conv_depth, layer.conv_depth_norm, layer.depth, weight.shape),
            (weight.reshape(weight.shape[0] * weight.shape[1], -1).numpy()),
        )


def _info(
    conv_depth: int | None, conv_depth_norm: float | None, depth: int | None, shape: Sequence[int]
) -> dict[str, Any]:
    return {
        "conv_depth": -1 if conv_depth is None else int(conv_depth),
        "conv_depth_norm": math.nan if conv_depth_norm is None else float(conv_depth_norm),
        "layer_depth": -1 if depth is None else int(depth),
        "in_channels": int(shape[1]),
        "out_channels": int(shape[0]),
    }


def _store_sources(
    folder: Path, kernel_size: tuple[int, int], models: Sequence[str] | None
) -> list[tuple[str, LayerStream]]:
    from filterstats.scanning.raw import filter_columns, read_filters_meta
    from filterstats.scanning.store import Store

    pq = require("pyarrow.parquet", extra="pandas")
    store = Store(folder)
    entries = {e.spec: e for e in store.entries() if e.status == "ok" and e.filters_file}
    labels = sorted(entries) if models is None else list(models)
    unknown = [label for label in labels if label not in entries]
    if unknown:
        raise ValueError(
            f"`models` {unknown[:5]} have no raw filters in the store {folder}; it has them for "
            f"{sorted(entries)[:8]}."
        )
    if not labels:
        raise ValueError(
            f"the store {folder} holds no raw filters; scan with raw_filters=True "
            "(CLI: --raw-filters)."
        )
    result = []
    for label in labels:
        file = folder / "filters" / entries[label].filters_file
        if not file.is_file():
            raise FileNotFoundError(
                f"the store entry of {label!r} names {file.name}, which is missing; scan the "
                "spec again to rebuild it."
            )
        recorded = tuple(read_filters_meta(pq.read_schema(file).metadata)["kernel_size"])
        if recorded != tuple(kernel_size):
            raise ValueError(
                f"the raw filters of {label!r} are {recorded} kernels, not {kernel_size}; pass "
                f"kernel_size={recorded}."
            )
        result.append((label, _store_layers(pq, file, filter_columns(kernel_size))))
    return result


def _store_layers(pq: Any, file: Path, value_columns: list[str]) -> LayerStream:
    """Each layer of one raw-filter file, read a row group at a time."""
    columns = ["layer", "conv_depth", "conv_depth_norm", "out_index", "in_index", *value_columns]
    parquet = pq.ParquetFile(file)
    current: dict[str, Any] | None = None
    done: set[str] = set()

    def finish(layer: dict[str, Any]) -> tuple[str, dict[str, Any], np.ndarray]:
        values = np.concatenate(layer["values"])
        n_out, n_in = layer["out"] + 1, layer["in"] + 1
        if n_out * n_in != len(values):
            raise ValueError(f"{file.name}: layer {layer['name']!r} is not a full out x in grid.")
        done.add(layer["name"])
        info = _info(layer["conv_depth"], layer["conv_depth_norm"], None, (n_out, n_in))
        return layer["name"], info, values

    for batch in parquet.iter_batches(columns=columns, batch_size=1 << 16):
        names = batch.column("layer")
        codes = np.asarray(names.indices)
        dictionary = names.dictionary.to_pylist()
        values = np.stack([np.asarray(batch.column(c), dtype=np.float32) for c in value_columns], 1)
        depth = np.asarray(batch.column("conv_depth"))
        depth_norm = np.asarray(batch.column("conv_depth_norm"), dtype=np.float64)
        out_index = np.asarray(batch.column("out_index"))
        in_index = np.asarray(batch.column("in_index"))
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        for begin, end in zip(starts, np.r_[starts[1:], len(codes)]):
            name = dictionary[codes[begin]]
            if current is not None and current["name"] != name:
                yield finish(current)
                current = None
            if current is None:
                if name in done:
                    raise ValueError(
                        f"{file.name}: the kernels of layer {name!r} are not contiguous."
                    )
                norm = float(depth_norm[begin])
                current = {
                    "name": name,
                    "conv_depth": None if depth[begin] < 0 else int(depth[begin]),
                    "conv_depth_norm": None if math.isnan(norm) else norm,
                    "out": -1,
                    "in": -1,
                    "values": [],
                }
            current["values"].append(values[begin:end])
            current["out"] = max(current["out"], int(out_index[begin:end].max()))
            current["in"] = max(current["in"], int(in_index[begin:end].max()))
    if current is not None:
        yield finish(current)
