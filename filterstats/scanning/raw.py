"""Raw-filter files: every extracted kernel with its layer metadata, columnar.

One Parquet file per model (the CNN Filter DB layout), one row per 2-D kernel:

=================  ===========  ===================================================
column             type         meaning
=================  ===========  ===================================================
``model``          dictionary   model label (the spec)
``layer``          dictionary   module path
``conv_depth``     int32        rank of the layer's depth (-1: unknown)
``conv_depth_norm`` float32     ``conv_depth`` scaled to [0, 1] (NaN: unknown)
``out_index``      int32        output channel (filter) index
``in_index``       int32        input channel index within the group
``w0`` ...         float16/32   kernel values, row-major (``w[i * kW + j]``)
=================  ===========  ===================================================

Rows are written in row groups of ``row_group_rows`` kernels (zstd
compressed), so a model never needs its kernels in memory twice and readers can
stream the file. The schema metadata (``filterstats_filters``) holds the kernel
size, dtype and model label.

Size on disk per million 3x3 kernels (16 layers of 256 x 256, Gaussian or
PyTorch-initialised weights; ``python benchmarks/bench_scan_store.py``):
about 17 MB in float16 and 38 MB in float32. The kernel values dominate (18 and
36 bytes raw); the metadata columns compress to almost nothing. At that rate
the 1.4 billion kernels of the CNN Filter DB take about 24 GB in float16.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from typing import IO, Any

import numpy as np
import torch

from filterstats._optional import require
from filterstats.layers import ConvLayer, FilterSet

__all__ = [
    "RAW_DTYPES",
    "filter_columns",
    "read_filters_meta",
    "read_filterset",
    "write_filters",
]

#: Value types a raw-filter file can hold.
RAW_DTYPES: tuple[str, ...] = ("float16", "float32")

_META_KEY = b"filterstats_filters"


def filter_columns(kernel_size: tuple[int, ...]) -> list[str]:
    """Names of the kernel-value columns for a kernel size.

    Args:
        kernel_size: E.g. ``(3, 3)``.

    Returns:
        ``["w0", ..., "w{n-1}"]`` with ``n = prod(kernel_size)``.
    """
    return [f"w{i}" for i in range(math.prod(kernel_size))]


def _schema(pa: Any, kernel_size: tuple[int, ...], dtype: str) -> Any:
    value = pa.float16() if dtype == "float16" else pa.float32()
    text = pa.dictionary(pa.int32(), pa.string())
    fields = [
        ("model", text),
        ("layer", text),
        ("conv_depth", pa.int32()),
        ("conv_depth_norm", pa.float32()),
        ("out_index", pa.int32()),
        ("in_index", pa.int32()),
    ]
    return pa.schema(fields + [(name, value) for name in filter_columns(kernel_size)])


class _Buffer:
    """Kernels of several layers, gathered until a row group is full."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.names: list[str] = []
        self.columns: dict[str, list[np.ndarray]] = {
            key: [] for key in ("layer", "conv_depth", "conv_depth_norm", "out", "in", "values")
        }
        self.rows = 0

    def add(self, layer: ConvLayer, values: np.ndarray) -> None:
        n_out, n_in = layer.weight.shape[:2]
        rows = values.shape[0]
        depth = -1 if layer.conv_depth is None else layer.conv_depth
        depth_norm = math.nan if layer.conv_depth_norm is None else layer.conv_depth_norm
        self.columns["layer"].append(np.full(rows, len(self.names), np.int32))
        self.columns["conv_depth"].append(np.full(rows, depth, np.int32))
        self.columns["conv_depth_norm"].append(np.full(rows, depth_norm, np.float32))
        self.columns["out"].append(np.repeat(np.arange(n_out, dtype=np.int32), n_in))
        self.columns["in"].append(np.tile(np.arange(n_in, dtype=np.int32), n_out))
        self.columns["values"].append(values)
        self.names.append(layer.name)
        self.rows += rows

    def table(self, pa: Any, schema: Any, model: str) -> Any:
        joined = {key: np.concatenate(parts) for key, parts in self.columns.items()}
        values = joined["values"]
        columns = [
            pa.DictionaryArray.from_arrays(np.zeros(self.rows, np.int32), [model]),
            pa.DictionaryArray.from_arrays(joined["layer"], self.names),
            pa.array(joined["conv_depth"]),
            pa.array(joined["conv_depth_norm"]),
            pa.array(joined["out"]),
            pa.array(joined["in"]),
            *(pa.array(values[:, i]) for i in range(values.shape[1])),
        ]
        self._reset()
        return pa.Table.from_arrays(columns, schema=schema)


def write_filters(
    file: IO[bytes],
    layers: Iterable[ConvLayer],
    *,
    model: str,
    kernel_size: tuple[int, ...],
    dtype: str = "float16",
    row_group_rows: int = 1 << 20,
) -> int:
    """Write every kernel of ``layers`` to an open binary file as Parquet.

    Layers are gathered until ``row_group_rows`` kernels are buffered, then
    written as row groups of at most that many rows; memory stays bounded by one
    layer plus one row group.

    Args:
        file: A binary file open for writing.
        layers: The layers, each weight ``(C_out, C_in / groups, *kernel_size)``.
        model: Model label for the ``model`` column.
        kernel_size: The one kernel size all layers have.
        dtype: ``"float16"`` (half the size; about 3 significant digits) or ``"float32"``.
        row_group_rows: Most kernels per Parquet row group.

    Returns:
        Number of kernels written.

    Raises:
        ValueError: A layer's kernel size differs from ``kernel_size``, or
            ``dtype`` is unknown.
    """
    if dtype not in RAW_DTYPES:
        raise ValueError(f"`raw_dtype` must be one of {RAW_DTYPES}, got {dtype!r}.")
    pa = require("pyarrow", extra="pandas")
    pq = require("pyarrow.parquet", extra="pandas")
    meta = {"kernel_size": list(kernel_size), "dtype": dtype, "model": model, "order": "C"}
    schema = _schema(pa, kernel_size, dtype).with_metadata({_META_KEY: json.dumps(meta)})
    torch_dtype = torch.float16 if dtype == "float16" else torch.float32
    width = math.prod(kernel_size)
    buffer = _Buffer()
    total = 0
    with pq.ParquetWriter(file, schema, compression="zstd") as writer:
        for layer in layers:
            if tuple(layer.weight.shape[2:]) != tuple(kernel_size):
                raise ValueError(
                    f"layer {layer.name!r} has kernels {tuple(layer.weight.shape[2:])}, not "
                    f"{tuple(kernel_size)}; raw filters need one kernel size (pass a tuple "
                    "`kernel_size`)."
                )
            with torch.no_grad():
                values = layer.weight.detach().reshape(-1, width).to("cpu", torch_dtype).numpy()
            buffer.add(layer, values)
            total += values.shape[0]
            if buffer.rows >= row_group_rows:
                writer.write_table(buffer.table(pa, schema, model), row_group_size=row_group_rows)
        if buffer.rows:
            writer.write_table(buffer.table(pa, schema, model), row_group_size=row_group_rows)
    return total


def read_filters_meta(schema_metadata: dict[bytes, bytes] | None) -> dict[str, Any]:
    """The ``filterstats_filters`` entry of a raw-filter file's schema metadata.

    Args:
        schema_metadata: ``pyarrow.Schema.metadata``.

    Returns:
        ``{"kernel_size": [...], "dtype": ..., "model": ..., "order": "C"}``.

    Raises:
        ValueError: The file is not a filterstats raw-filter file.
    """
    raw = (schema_metadata or {}).get(_META_KEY)
    if raw is None:
        raise ValueError("not a filterstats raw-filter file (no filterstats_filters metadata)")
    meta: dict[str, Any] = json.loads(raw)
    return meta


def read_filterset(path: str | os.PathLike[str]) -> FilterSet:
    """One model's raw-filter file as a [`FilterSet`][filterstats.FilterSet].

    Each layer's weight ``(C_out, C_in / groups, kH, kW)`` is rebuilt from its rows
    (float32; float16 files are widened), with its name, ``conv_depth`` and
    ``conv_depth_norm`` as stored; groups and stride are not stored (``None``). Every
    function that takes a model reads these files through the resolver, so
    ``fs.filter_divergence(store.filter_paths(...), ...)`` streams a scan store one
    model at a time.

    Args:
        path: A ``.parquet`` file written by ``scan(..., raw_filters=True)``.

    Returns:
        The layers in file order; ``source`` is the stored model label and
        ``depth_method`` ``"raw_filters"``.

    Raises:
        ValueError: The file is not a filterstats raw-filter file.
    """
    pq = require("pyarrow.parquet", extra="pandas")
    table = pq.read_table(os.fspath(path))
    meta = read_filters_meta(table.schema.metadata)
    kernel_size = tuple(int(k) for k in meta["kernel_size"])
    columns = filter_columns(kernel_size)
    layer_column = table.column("layer").combine_chunks()
    names = [str(n) for n in layer_column.dictionary.to_pylist()]
    codes = layer_column.indices.to_numpy(zero_copy_only=False)
    outs = table.column("out_index").to_numpy()
    ins = table.column("in_index").to_numpy()
    depths = table.column("conv_depth").to_numpy()
    norms = table.column("conv_depth_norm").to_numpy()
    values = np.stack(
        [table.column(c).to_numpy().astype(np.float32, copy=False) for c in columns], axis=1
    )
    del table
    layers = []
    for code in _first_seen(codes):
        rows = np.flatnonzero(codes == code)
        n_out, n_in = int(outs[rows].max()) + 1, int(ins[rows].max()) + 1
        weight = np.zeros((n_out, n_in, math.prod(kernel_size)), dtype=np.float32)
        weight[outs[rows], ins[rows]] = values[rows]
        depth = int(depths[rows[0]])
        norm = float(norms[rows[0]])
        layers.append(
            ConvLayer(
                names[code],
                "raw_filters",
                torch.from_numpy(weight.reshape(n_out, n_in, *kernel_size)),
                in_channels=n_in,
                out_channels=n_out,
                groups=None,
                kernel_size=kernel_size,
                conv_depth=None if depth < 0 else depth,
                conv_depth_norm=None if math.isnan(norm) else norm,
            )
        )
    return FilterSet(
        tuple(layers),
        depth_method="raw_filters",
        source=str(meta.get("model", "")),
        kernel_size=kernel_size,
    )


def _first_seen(codes: np.ndarray) -> list[int]:
    """Distinct values in order of first appearance."""
    _, first = np.unique(codes, return_index=True)
    return [int(codes[i]) for i in sorted(first)]
