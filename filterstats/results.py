"""Frozen per-layer results: a printable table that exports and reads back.

A [`FilterReport`][filterstats.FilterReport] holds one row per convolution of a model:
selected layers with their metrics (``status="ok"``) and every other convolution with
the reason it was skipped (``status="skipped"``, metrics NaN, and whatever is known of
the layer: channels, kernel, depth). It carries the parameters that made it, so a
saved table says how it was computed. The metric columns are those of
[`filterstats.metric_table`][filterstats.metric_table] that the report holds.

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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filterstats import metric_table
from filterstats._files import atomic_target, atomic_write_text
from filterstats._optional import require
from filterstats._tables import MetricAttributes, csv_value, html_table, json_value
from filterstats._text import plural, render_table
from filterstats.layers import layer_kind

if TYPE_CHECKING:
    from filterstats.baseline import InitBaseline
    from filterstats.spectra import ConvSpectra

__all__ = [
    "COLUMNS",
    "SCHEMA_VERSION",
    "AnalysisParams",
    "FilterReport",
    "LayerRow",
    "read_report",
]

#: Version of the exported table layout; bumped on any change of columns or meaning.
#: 2: unknown integers are empty (null) instead of -1/0; skipped rows keep what is
#: known of the layer; metric columns follow the metric table.
#: 3: a ``kind`` column (dense / grouped / depthwise); ``group_orthogonality`` and
#: the frequency profile (``freq_dc``, ``freq_low``, ``freq_high``). Version-2 files
#: read back with ``kind`` derived from ``groups`` and ``in_channels``.
SCHEMA_VERSION = 3


@dataclass(frozen=True)
class LayerRow(MetricAttributes):
    """One convolution of one model.

    Metric values are read as attributes (``row.diversity``); a metric of the table
    that the row does not hold (a skipped layer) reads as NaN.

    Attributes:
        model: Model label.
        layer: Full module path.
        module_type: Class name of the module.
        status: ``"ok"`` (measured) or ``"skipped"``.
        reason: Why it was skipped; empty when measured.
        depth: Longest path from the input (graph nodes); ``None`` when unknown.
        conv_depth: Rank among the model's conv depths (0 = first); ``None`` when unknown.
        conv_depth_norm: ``conv_depth / (number of conv depths - 1)``, NaN when unknown.
        in_channels: Input channels; ``None`` when unknown.
        out_channels: Output channels (filters); ``None`` when unknown.
        groups: Convolution groups; ``None`` when unknown (state dicts).
        kind: ``"dense"``, ``"grouped"`` or ``"depthwise"``
            (`filterstats.layers.layer_kind`); empty when the groups
            are unknown.
        kernel_size: Kernel size as text, e.g. ``"3x3"``; empty when unknown.
        n_filters: Kernels (``C_out * C_in / groups``); ``None`` for skipped layers.
        n_nonsparse: Non-sparse kernels; ``None`` for skipped layers.
        shared_with: Other modules using the same weight, ``;``-separated.
        metrics: ``{metric name: value}`` for the metrics of
            [`filterstats.metric_table`][filterstats.metric_table] that were computed.
    """

    model: str
    layer: str
    module_type: str
    status: str = "ok"
    reason: str = ""
    depth: int | None = None
    conv_depth: int | None = None
    conv_depth_norm: float = math.nan
    in_channels: int | None = None
    out_channels: int | None = None
    groups: int | None = None
    kind: str = ""
    kernel_size: str = ""
    n_filters: int | None = None
    n_nonsparse: int | None = None
    shared_with: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)

    def record(self, metrics: Sequence[str] | None = None) -> dict[str, Any]:
        """The row as one flat dict: metadata columns, then the metric columns.

        Args:
            metrics: Metric columns to give (NaN where the row has none); default:
                the row's own.

        Returns:
            ``{column: value}`` in table column order.
        """
        names = list(self.metrics) if metrics is None else list(metrics)
        record = {name: getattr(self, name) for name in _BEFORE}
        record.update({name: float(self.metrics.get(name, math.nan)) for name in names})
        record.update({name: getattr(self, name) for name in _AFTER})
        return record


_META = [f for f in fields(LayerRow) if f.name != "metrics"]
_BEFORE = tuple(f.name for f in _META if f.name != "shared_with")
_AFTER = ("shared_with",)
_TYPES = {f.name: str(f.type) for f in _META}

#: Column names of a table holding every metric of the metric table, in order.
#: Metrics that need an option of ``analyze`` (``spectra=True``) are not among them.
COLUMNS = (*_BEFORE, *(m.name for m in metric_table.METRICS if not m.needs), *_AFTER)


@dataclass(frozen=True)
class AnalysisParams:
    """How a report was computed.

    Attributes:
        eps: Sparsity threshold (fraction of the layer's largest |weight|).
        kernel_size: The kernel-size selection that was applied, as text (``"3x3"``,
            also for ``kernel_size=3``; ``"all"``).
        definition: ``"paper"`` or ``"torchconvquality"``.
        scale_filters: Kernels divided by their own max |value| for diversity.
        drop_sparse: Sparse kernels left out of ``diversity``.
        normalize: Diversity divided by torchconvquality's threshold.
        strict: Sparse is ``<`` rather than ``<=``.
        nan_policy: How non-finite weights were handled.
        depth_method: How depths were obtained.
        spectra: With ``analyze(..., spectra=True)``: the spectra's parameters as
            JSON (input size, padding, tol, method, dtype, ...); empty otherwise.
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
    spectra: str = ""
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
        baseline: With ``analyze(..., baseline="init")``: every metric against the same
            layers re-initialised (an [`InitBaseline`][filterstats.baseline.InitBaseline]);
            printed after the table, and four columns per metric in the exports
            (``<metric>_init_mean``, ``_init_std``, ``_init_diff``, ``_init_z``).
            ``None``: no baseline.
        spectra: With ``analyze(..., spectra=True)``: the
            [`ConvSpectra`][filterstats.spectra.ConvSpectra] the spectral columns came
            from (method, bounds and skipped layers per convolution); ``None``
            otherwise.
    """

    rows: tuple[LayerRow, ...]
    params: AnalysisParams = field(default_factory=AnalysisParams)
    baseline: InitBaseline | None = None
    spectra: ConvSpectra | None = None

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
    def metrics(self) -> tuple[str, ...]:
        """Metric columns the report holds: metric-table order, then any others."""
        return metric_table.in_table_order(name for row in self.rows for name in row.metrics)

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names of the exported table, in order."""
        return (*_BEFORE, *self.metrics, *self._baseline_columns(), *_AFTER)

    def _baseline_columns(self) -> list[str]:
        return [] if self.baseline is None else self.baseline.columns_for(self.metrics)

    def provenance(self) -> dict[str, Any]:
        """How the report was made, as every export stores it.

        Returns:
            The parameters as a dict, with a ``"baseline"`` entry (seeds, method)
            when the report has a baseline.
        """
        payload = asdict(self.params)
        if self.baseline is not None:
            payload["baseline"] = self.baseline.provenance()
        return payload

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
        if name not in _TYPES and name not in self.metrics:
            raise KeyError(f"unknown column {name!r}; columns: {', '.join(self.columns)}")
        rows = self.measured if measured_only else self.rows
        return [getattr(row, name) for row in rows]

    # ---------------------------------------------------------------- exports
    def to_records(self) -> list[dict[str, Any]]:
        """Rows as plain dicts (JSON-ready apart from NaN).

        Returns:
            One dict per row, keys in ``columns`` order.
        """
        metrics = self.metrics
        records = [row.record(metrics) for row in self.rows]
        if self.baseline is None:
            return records
        wide = []
        for row, record in zip(self.rows, records, strict=True):
            after = {name: record.pop(name) for name in _AFTER}
            record.update(self.baseline.wide(row.model, row.layer))
            record.update(after)
            wide.append(record)
        return wide

    def to_pandas(self) -> Any:
        """Rows as a pandas DataFrame; ``df.attrs["filterstats"]`` holds the parameters.

        Integer columns with unknown values (skipped layers) are pandas' nullable
        ``Int64``.

        Returns:
            A ``pandas.DataFrame`` with the columns of ``columns``.
        """
        pd = require("pandas", extra="pandas")
        frame = pd.DataFrame(self.to_records(), columns=list(self.columns))
        for name, kind in _TYPES.items():
            if kind.startswith("int"):
                frame[name] = frame[name].astype("Int64")
        frame.attrs["filterstats"] = self.provenance()
        return frame

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write (or return) the table as CSV, parameters in a leading comment line.

        Args:
            path: File to write; ``None`` returns the text only.

        Returns:
            The CSV text.
        """
        buffer = io.StringIO()
        buffer.write("# filterstats " + json.dumps(self.provenance(), sort_keys=True) + "\n")
        writer = csv.DictWriter(buffer, fieldnames=list(self.columns), lineterminator="\n")
        writer.writeheader()
        for record in self.to_records():
            writer.writerow({k: csv_value(v) for k, v in record.items()})
        text = buffer.getvalue()
        if path is not None:
            atomic_write_text(path, text, example="table.csv")
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
            "filterstats": self.provenance(),
            "rows": [{k: json_value(v) for k, v in r.items()} for r in self.to_records()],
        }
        text = json.dumps(payload, indent=1, allow_nan=False)
        if path is not None:
            atomic_write_text(path, text, example="table.json")
        return text

    def to_parquet(self, path: str | os.PathLike[str]) -> None:
        """Write the report as Parquet (needs ``filterstats[pandas]``).

        Args:
            path: File to write; parameters go into the schema metadata.
        """
        pa = require("pyarrow", extra="pandas")
        pq = require("pyarrow.parquet", extra="pandas")
        records = self.to_records()
        columns = {name: [r[name] for r in records] for name in self.columns}
        values = [*self.metrics, *self._baseline_columns()]
        table = pa.table(columns, schema=_arrow_schema(pa, values))
        meta = {b"filterstats": json.dumps(self.provenance()).encode()}
        table = table.replace_schema_metadata(meta)
        with atomic_target(path, example="table.parquet") as temporary:
            pq.write_table(table, temporary)

    # ---------------------------------------------------------------- display
    def __repr__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        """The report as HTML for notebooks: measured layers, then skipped ones."""
        title = self.table().split("\n", 1)[0]
        shown = [m for m in metric_table.default_metrics() if m in self.metrics]
        columns = [
            *(["model"] if len(self.models) > 1 else []), "layer", "module_type", "kind",
            "kernel_size", "in_channels", "out_channels", "groups", "conv_depth_norm", *shown,
        ]  # fmt: skip
        records = self.to_records()
        columns = [c for c in columns if not records or c in records[0]]
        measured = [r for r in records if r["status"] == "ok"]
        parts = [html_table(measured, columns, caption=title)]
        skipped = [r for r in records if r["status"] != "ok"]
        if skipped:
            skip_columns = [c for c in columns if c not in shown] + ["reason"]
            parts.append(html_table(skipped, skip_columns, caption="skipped convolutions"))
        if self.baseline is not None:
            parts.append(self.baseline._repr_html_())
        return "".join(parts)

    def table(self, *, max_rows: int = 60) -> str:
        """The report as fixed-width text: measured layers, then skipped ones with reasons.

        Shows the metrics of the table marked ``default`` (the paper's three) that
        the report holds; ``to_pandas()`` and the exports have every column.

        Args:
            max_rows: Measured rows shown before eliding the middle (skipped rows are
                all listed).

        Returns:
            The table as text.
        """
        multi = len(self.models) > 1
        lead = ["model"] if multi else []
        shown = [m for m in metric_table.default_metrics() if m in self.metrics]
        head = [*lead, "layer", "type", "shape", "depth", *shown]
        lines = []
        for row in self.measured:
            cells = [row.model] if multi else []
            cells += [row.layer, row.module_type, _shape_text(row), _fmt(row.conv_depth_norm, 2)]
            cells += [_fmt(getattr(row, m), metric_table.get_metric(m).digits) for m in shown]
            lines.append(cells)
        if len(lines) > max_rows:
            half = max_rows // 2
            lines = [*lines[:half], ["..."] + [""] * (len(head) - 1), *lines[-half:]]
        params = self.params
        title = (
            f"FilterReport: {', '.join(self.models) or 'empty'} — "
            f"{plural(len(self.measured), 'layer')} measured, {len(self.skipped)} skipped "
            f"(definition={params.definition}, "
            f"eps={params.eps}, kernel={params.kernel_size}, depth={params.depth_method})"
        )
        parts = [render_table(title, head, lines)]
        if self.skipped:
            skip_head = [*lead, "layer", "type", "shape", "depth", "reason"]
            skip_lines = [
                [*([row.model] if multi else []), row.layer, row.module_type,
                 _shape_text(row), _fmt(row.conv_depth_norm, 2), row.reason]
                for row in self.skipped
            ]  # fmt: skip
            parts.append(render_table("skipped:", skip_head, skip_lines))
        if self.baseline is not None:
            parts += ["", self.baseline.table()]
        return "\n".join(parts)

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
        rows = tuple(row for r in reports for row in r.rows)
        held = [r.baseline for r in reports if r.baseline is not None]
        if len(held) != len(reports):
            return cls(rows, reports[0].params)  # a baseline only where every report has one
        from filterstats.baseline import InitBaseline

        return cls(rows, reports[0].params, baseline=InitBaseline.concat(held))


def _shape_text(row: LayerRow) -> str:
    """``C_out x C_in/groups x kernel`` (``?`` for what is unknown), with ``g=`` when grouped."""
    if row.out_channels is None and not row.kernel_size:
        return "?"
    groups = row.groups or 1
    per_group = "?" if row.in_channels is None else str(row.in_channels // groups)
    out = "?" if row.out_channels is None else str(row.out_channels)
    shape = f"{out}x{per_group}x{row.kernel_size or '?'}"
    return shape if groups <= 1 else f"{shape} g={groups}"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _arrow_schema(pa: Any, metrics: Sequence[str]) -> Any:
    kinds = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}
    meta = [(name, kinds[_kind(name)]) for name in _BEFORE]
    values = [(name, pa.float64()) for name in metrics]
    return pa.schema([*meta, *values, *((name, kinds[_kind(name)]) for name in _AFTER)])


def _kind(name: str) -> str:
    return _TYPES[name].split(" ")[0]  # "int | None" -> "int"


def _convert(name: str, value: Any) -> Any:
    kind = _kind(name) if name in _TYPES else "float"
    if kind == "str":
        return "" if value is None else str(value)
    if kind == "int":
        return None if value in (None, "") else int(value)
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


#: Metadata columns added after version 2, derived when an older table lacks them.
_ADDED = {"kind"}


def _report_from(records: list[dict[str, Any]], payload: dict[str, Any]) -> FilterReport:
    """A report from flat records and its stored parameters (and baseline, if any)."""
    params = _params_from(payload)
    provenance = payload.get("baseline")
    if not isinstance(provenance, dict):
        return FilterReport(_rows_from(records), params)
    from filterstats.baseline import BASELINE_SUFFIXES, InitBaseline

    def is_baseline(name: str) -> bool:
        return name not in _TYPES and name.endswith(BASELINE_SUFFIXES)

    converted = [{k: _convert(k, v) for k, v in record.items()} for record in records]
    baseline = InitBaseline.from_wide(converted, provenance, params)
    plain = [{k: v for k, v in record.items() if not is_baseline(k)} for record in records]
    return FilterReport(_rows_from(plain), params, baseline=baseline)


def _rows_from(records: list[dict[str, Any]]) -> tuple[LayerRow, ...]:
    """Rows from flat records: the metadata columns, and every other column a metric."""
    missing = {*_BEFORE, *_AFTER} - set(records[0]) - _ADDED if records else set()
    if missing:
        raise ValueError(f"not a filterstats table: columns {sorted(missing)} are missing")
    rows = []
    for record in records:
        meta = {name: _convert(name, record[name]) for name in (*_BEFORE, *_AFTER)
                if name in record}  # fmt: skip
        if "kind" not in record:  # a version-2 table: derived as analyze derives it
            meta["kind"] = layer_kind(meta["groups"], meta["in_channels"])
        values = {k: _convert(k, v) for k, v in record.items() if k not in _TYPES}
        if meta["status"] != "ok":
            values = {k: v for k, v in values.items() if not math.isnan(v)}
        rows.append(LayerRow(**meta, metrics=values))
    return tuple(rows)


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
        payload = json.loads(first[len("# filterstats ") :])
        return _report_from(list(csv.DictReader(io.StringIO(body))), payload)
    if suffix == ".json":
        payload = json.loads(target.read_text(encoding="utf-8"))
        if not isinstance(payload, dict) or "rows" not in payload:
            raise ValueError(f"{target} is not a filterstats JSON report")
        return _report_from(payload["rows"], payload["filterstats"])
    if suffix == ".parquet":
        pq = require("pyarrow.parquet", extra="pandas")
        table = pq.read_table(target)
        meta = (table.schema.metadata or {}).get(b"filterstats")
        if meta is None:
            raise ValueError(f"{target} is not a filterstats Parquet file (no metadata)")
        return _report_from(table.to_pylist(), json.loads(meta))
    raise ValueError(f"unknown table format {suffix!r} for {target}: use .csv, .json or .parquet")
