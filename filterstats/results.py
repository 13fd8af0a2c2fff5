"""Frozen per-layer results: a printable table that exports and reads back.

A [`FilterReport`][filterstats.FilterReport] holds one row per convolution of a model:
selected layers with their metrics (``status="ok"``) and every other convolution with
the reason it was skipped (``status="skipped"``, metrics NaN). It carries the
parameters that made it, so a saved table says how it was computed.

Exports round-trip: CSV (a ``# filterstats`` comment line holds the parameters),
JSON, and Parquet (needs ``pip install 'filterstats[pandas]'``; parameters in the
schema metadata).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from filterstats._files import atomic_target, atomic_write_text
from filterstats._optional import require
from filterstats._tables import csv_value, json_value

__all__ = ["SCHEMA_VERSION", "AnalysisParams", "FilterReport", "LayerRow", "read_report"]

#: Version of the exported table layout; bumped on any change of columns or meaning.
SCHEMA_VERSION = 1

_METRICS = ("sparsity", "diversity", "diversity_clean", "entropy_raw", "orthogonality")


@dataclass(frozen=True)
class LayerRow:
    """One convolution of one model.

    Attributes:
        model: Model label.
        layer: Full module path.
        module_type: Class name of the module.
        status: ``"ok"`` (measured) or ``"skipped"``.
        reason: Why it was skipped; empty when measured.
        depth: Longest path from the input (graph nodes); -1 when unknown.
        conv_depth: Rank among the model's conv depths (0 = first); -1 when unknown.
        conv_depth_norm: ``conv_depth / (number of conv depths - 1)``, NaN when unknown.
        in_channels: Input channels.
        out_channels: Output channels (filters).
        groups: Convolution groups; 0 when unknown (state dicts).
        kernel_size: Kernel size as text, e.g. ``"3x3"``.
        n_filters: Kernels (``C_out * C_in / groups``).
        n_nonsparse: Non-sparse kernels.
        sparsity: Fraction of sparse kernels, in [0, 1].
        diversity: Variance entropy (base 10) under the report's definition.
        diversity_clean: Variance entropy of the non-sparse kernels only.
        entropy_raw: Variance entropy of the raw kernels, all kept, not normalised.
        orthogonality: 1 minus the mean |cosine| between output filters, in [0, 1].
        shared_with: Other modules using the same weight, ``;``-separated.
    """

    model: str
    layer: str
    module_type: str
    status: str = "ok"
    reason: str = ""
    depth: int = -1
    conv_depth: int = -1
    conv_depth_norm: float = math.nan
    in_channels: int = 0
    out_channels: int = 0
    groups: int = 0
    kernel_size: str = ""
    n_filters: int = 0
    n_nonsparse: int = 0
    sparsity: float = math.nan
    diversity: float = math.nan
    diversity_clean: float = math.nan
    entropy_raw: float = math.nan
    orthogonality: float = math.nan
    shared_with: str = ""


#: Column names of the table, in order.
COLUMNS = tuple(f.name for f in fields(LayerRow))
_TYPES = {f.name: f.type for f in fields(LayerRow)}


@dataclass(frozen=True)
class AnalysisParams:
    """How a report was computed.

    Attributes:
        eps: Sparsity threshold (fraction of the layer's largest |weight|).
        kernel_size: Selected kernel size as text (``"3x3"``, ``"all"``).
        definition: ``"paper"`` or ``"torchconvquality"``.
        scale_filters: Kernels divided by their own max |value| for diversity.
        drop_sparse: Sparse kernels left out of ``diversity``.
        normalize: Diversity divided by torchconvquality's threshold.
        strict: Sparse is ``<`` rather than ``<=``.
        nan_policy: How non-finite weights were handled.
        depth_method: How depths were obtained.
        version: filterstats version.
        schema_version: Table layout version.
    """

    eps: float = 0.01
    kernel_size: str = "3x3"
    definition: str = "paper"
    scale_filters: bool = True
    drop_sparse: bool = True
    normalize: bool = False
    strict: bool = False
    nan_policy: str = "propagate"
    depth_method: str = ""
    version: str = ""
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True, eq=False)
class FilterReport(Sequence[LayerRow]):
    """Per-layer filter statistics of one model (or of several, concatenated).

    A read-only sequence of [`LayerRow`][filterstats.results.LayerRow], measured
    layers and skipped ones; prints as a table. Index by position or layer name.

    Attributes:
        rows: The measured layers in module order, then the skipped convolutions.
        params: How the report was computed.
    """

    rows: tuple[LayerRow, ...]
    params: AnalysisParams = field(default_factory=AnalysisParams)

    # ---------------------------------------------------------------- sequence
    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[LayerRow]:
        return iter(self.rows)

    def __getitem__(self, key: int | str) -> LayerRow:  # type: ignore[override]
        if isinstance(key, str):
            for row in self.rows:
                if row.layer == key:
                    return row
            raise KeyError(f"no layer named {key!r} in the report")
        return self.rows[key]

    @property
    def models(self) -> tuple[str, ...]:
        """Model labels in order of first appearance."""
        return tuple(dict.fromkeys(row.model for row in self.rows))

    @property
    def measured(self) -> tuple[LayerRow, ...]:
        """Rows of the measured layers (``status == "ok"``)."""
        return tuple(row for row in self.rows if row.status == "ok")

    @property
    def skipped(self) -> tuple[LayerRow, ...]:
        """Rows of the skipped convolutions, with their ``reason``."""
        return tuple(row for row in self.rows if row.status != "ok")

    def column(self, name: str, *, measured_only: bool = True) -> list[Any]:
        """Values of one column.

        Args:
            name: A column name (see ``COLUMNS``).
            measured_only: Leave out skipped rows.

        Returns:
            The values, in row order.
        """
        if name not in _TYPES:
            raise KeyError(f"unknown column {name!r}; columns: {', '.join(COLUMNS)}")
        rows = self.measured if measured_only else self.rows
        return [getattr(row, name) for row in rows]

    # ---------------------------------------------------------------- exports
    def to_records(self) -> list[dict[str, Any]]:
        """Rows as plain dicts (JSON-ready apart from NaN).

        Returns:
            One dict per row, keys in ``COLUMNS`` order.
        """
        return [asdict(row) for row in self.rows]

    def to_pandas(self) -> Any:
        """Rows as a pandas DataFrame; ``df.attrs["filterstats"]`` holds the parameters.

        Returns:
            A ``pandas.DataFrame`` with the columns of ``COLUMNS``.
        """
        pd = require("pandas", extra="pandas")
        frame = pd.DataFrame(self.to_records(), columns=list(COLUMNS))
        frame.attrs["filterstats"] = asdict(self.params)
        return frame

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write (or return) the table as CSV, parameters in a leading comment line.

        Args:
            path: File to write; ``None`` returns the text only.

        Returns:
            The CSV text.
        """
        buffer = io.StringIO()
        buffer.write("# filterstats " + json.dumps(asdict(self.params), sort_keys=True) + "\n")
        writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        for record in self.to_records():
            writer.writerow({k: csv_value(v) for k, v in record.items()})
        text = buffer.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write (or return) the report as JSON: ``{"params": ..., "rows": [...]}``.

        NaN is written as ``null``.

        Args:
            path: File to write; ``None`` returns the text only.

        Returns:
            The JSON text.
        """
        payload = {
            "filterstats": asdict(self.params),
            "rows": [{k: json_value(v) for k, v in r.items()} for r in self.to_records()],
        }
        text = json.dumps(payload, indent=1, allow_nan=False)
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_parquet(self, path: str | os.PathLike[str]) -> None:
        """Write the report as Parquet (needs ``filterstats[pandas]``).

        Args:
            path: File to write; parameters go into the schema metadata.
        """
        pa = require("pyarrow", extra="pandas")
        pq = require("pyarrow.parquet", extra="pandas")
        columns = {name: [getattr(r, name) for r in self.rows] for name in COLUMNS}
        table = pa.table(columns, schema=_arrow_schema(pa))
        meta = {b"filterstats": json.dumps(asdict(self.params)).encode()}
        table = table.replace_schema_metadata(meta)
        with atomic_target(path) as temporary:
            pq.write_table(table, temporary)

    # ---------------------------------------------------------------- display
    def __repr__(self) -> str:
        return self.table()

    def table(self, *, max_rows: int = 60) -> str:
        """The report as a fixed-width text table.

        Args:
            max_rows: Rows shown before eliding the middle.

        Returns:
            The table as text, one line per layer.
        """
        multi = len(self.models) > 1
        head = ["model"] if multi else []
        head += ["layer", "type", "shape", "depth", "sparsity", "diversity", "orthogonality"]
        lines = []
        for row in self.rows:
            cells = [row.model] if multi else []
            shape = _shape_text(row)
            if row.status == "ok":
                cells += [
                    row.layer,
                    row.module_type,
                    shape,
                    _fmt(row.conv_depth_norm, 2),
                    _fmt(row.sparsity),
                    _fmt(row.diversity),
                    _fmt(row.orthogonality),
                ]
            else:
                cells += [row.layer, row.module_type, "skipped: " + row.reason, "", "", "", ""]
            lines.append(cells)
        if len(lines) > max_rows:
            half = max_rows // 2
            lines = [*lines[:half], ["..."] + [""] * (len(head) - 1), *lines[-half:]]
        widths = [
            max([len(h)] + [len(c[i]) for c in lines if i < len(c)]) for i, h in enumerate(head)
        ]
        widths = [min(w, 48) for w in widths]

        def render(cells: list[str]) -> str:
            return "  ".join(c[:48].ljust(w) for c, w in zip(cells, widths)).rstrip()

        title = (
            f"FilterReport: {', '.join(self.models) or 'empty'} — {len(self.measured)} layers "
            f"measured, {len(self.skipped)} skipped (definition={self.params.definition}, "
            f"eps={self.params.eps}, kernel={self.params.kernel_size}, "
            f"depth={self.params.depth_method})"
        )
        return "\n".join([title, render(head), *(render(c) for c in lines)])

    # ---------------------------------------------------------------- combine
    @classmethod
    def concat(cls, reports: Sequence[FilterReport]) -> FilterReport:
        """Concatenate reports of several models (parameters of the first).

        Args:
            reports: Reports to join; their parameters should agree.

        Returns:
            One report with all rows.
        """
        if not reports:
            return cls(())
        return cls(tuple(row for r in reports for row in r.rows), reports[0].params)


def _shape_text(row: LayerRow) -> str:
    per_group = row.in_channels // row.groups if row.groups else row.in_channels
    shape = f"{row.out_channels}x{per_group}x{row.kernel_size}"
    return shape if row.groups <= 1 else f"{shape} g={row.groups}"


def _fmt(value: float, digits: int = 4) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _arrow_schema(pa: Any) -> Any:
    kinds = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}
    return pa.schema([(name, kinds[str(_TYPES[name])]) for name in COLUMNS])


def _convert(name: str, value: Any) -> Any:
    kind = str(_TYPES[name])
    if kind == "str":
        return "" if value is None else str(value)
    if kind == "int":
        return int(value) if value not in (None, "") else 0
    number = math.nan if value in (None, "", "nan") else float(value)
    return math.nan if math.isnan(number) else number  # one NaN object: rows compare equal


def _params_from(payload: dict[str, Any]) -> AnalysisParams:
    known = {f.name for f in fields(AnalysisParams)}
    version = int(payload.get("schema_version", SCHEMA_VERSION))
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"table written with schema version {version}, newer than this filterstats "
            f"({SCHEMA_VERSION}); upgrade: pip install -U filterstats"
        )
    return AnalysisParams(**{k: v for k, v in payload.items() if k in known})


def _rows_from(records: list[dict[str, Any]]) -> tuple[LayerRow, ...]:
    missing = set(COLUMNS) - set(records[0]) if records else set()
    if missing:
        raise ValueError(f"not a filterstats table: columns {sorted(missing)} are missing")
    return tuple(LayerRow(**{n: _convert(n, r[n]) for n in COLUMNS}) for r in records)


def read_report(path: str | os.PathLike[str]) -> FilterReport:
    """Read a report written by ``to_csv``, ``to_json`` or ``to_parquet``.

    Args:
        path: A ``.csv``, ``.json`` or ``.parquet`` file.

    Returns:
        The report, equal to the one written.

    Raises:
        ValueError: If the file is not a filterstats table or its suffix is unknown.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix == ".csv":
        text = target.read_text(encoding="utf-8")
        first, _, body = text.partition("\n")
        if not first.startswith("# filterstats "):
            raise ValueError(f"{target} is not a filterstats CSV (no '# filterstats' header)")
        params = _params_from(json.loads(first[len("# filterstats ") :]))
        return FilterReport(_rows_from(list(csv.DictReader(io.StringIO(body)))), params)
    if suffix == ".json":
        payload = json.loads(target.read_text(encoding="utf-8"))
        if not isinstance(payload, dict) or "rows" not in payload:
            raise ValueError(f"{target} is not a filterstats JSON report")
        return FilterReport(_rows_from(payload["rows"]), _params_from(payload["filterstats"]))
    if suffix == ".parquet":
        pq = require("pyarrow.parquet", extra="pandas")
        table = pq.read_table(target)
        meta = (table.schema.metadata or {}).get(b"filterstats")
        if meta is None:
            raise ValueError(f"{target} is not a filterstats Parquet file (no metadata)")
        return FilterReport(_rows_from(table.to_pylist()), _params_from(json.loads(meta)))
    raise ValueError(f"unknown table format {suffix!r} for {target}: use .csv, .json or .parquet")
