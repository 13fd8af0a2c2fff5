"""Filter metrics tracked while a model trains: ``FilterTracker`` and ``FilterHistory``.

Two lines in a training loop record, every ``every`` steps, the per-layer metrics of
[`analyze`][filterstats.analyze] and the **drift** of each layer from the first
snapshot::

    tracker = fs.FilterTracker(model, every=100)
    for step, (x, y) in enumerate(loader):
        loss = ...; loss.backward(); opt.step(); opt.zero_grad()
        tracker.step(step)
    history = tracker.history()

or, without touching the loop, ``fs.FilterTracker(model, optimizer=opt)`` (the
optimizer's post-step hook; removed by ``tracker.close()`` or a ``with`` block).

Drift, per layer, compares each output filter ``w_i`` (its weights
``(C_in / groups, *kernel)`` flattened) with the same filter ``w0_i`` at the first
snapshot, in float64:

* ``drift_cosine``: the mean over output filters of ``cos(w_i, w0_i)``
  (1.0: every filter points where it started);
* ``drift_unmoved``: the share of output filters with ``cos(w_i, w0_i) >=
  unmoved_cosine`` (default 0.99, about 8 degrees): filters that barely left their
  start.

A filter that is all zero at both snapshots has cosine 1 (it did not move); one that
is zero at exactly one of them has cosine 0.

Nothing about the model is changed: the tracker reads detached views of the
effective weights (no copy, on their device) through the resolver's own reader,
measures them where they are, and synchronises with the host only when a snapshot
is taken (two transfers: the metric table and the drift values). The structure
(layers, depths, skipped convolutions) is resolved once, at the first snapshot, with
[`extract_filters`][filterstats.extract_filters]; the first snapshot's weights are
kept (one copy of the selected convolution weights, on their device) as the drift
reference.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from filterstats import metric_table
from filterstats._checks import NanPolicy
from filterstats._files import atomic_target
from filterstats._optional import require
from filterstats._tables import MetricAttributes, csv_value, html_table
from filterstats._text import fmt, plural, render_table
from filterstats._version import __version__
from filterstats.layers import ConvLayer, FilterSet, KernelSelection
from filterstats.metrics import Definition
from filterstats.results import AnalysisParams, FilterReport, LayerRow

__all__ = [
    "DRIFT_METRICS",
    "CSVSink",
    "FilterHistory",
    "FilterTracker",
    "HistoryRow",
    "Sink",
    "TrackingParams",
    "filter_drift",
    "layer_drift",
    "measure_snapshot",
    "read_history",
]

#: The drift columns every snapshot adds to the metrics of ``analyze``.
DRIFT_METRICS = ("drift_cosine", "drift_unmoved")

#: Default cosine from which a filter counts as not moved (``drift_unmoved``).
UNMOVED_COSINE = 0.99

_CSV_MAGIC = "# filterstats-history "


# --------------------------------------------------------------------------- drift
def filter_drift(
    weight: Tensor,
    start: Tensor,
    *,
    unmoved_cosine: float = UNMOVED_COSINE,
    chunk_bytes: int = 64 * 2**20,
) -> tuple[Tensor, Tensor]:
    """Drift of one layer: mean cosine of its output filters to their start, share unmoved.

    Args:
        weight: The layer's weight now, ``(C_out, C_in / groups, *kernel)``.
        start: The same layer's weight at the reference snapshot, same shape.
        unmoved_cosine: A filter with cosine at least this counts as unmoved.
        chunk_bytes: Working memory: output filters are taken in chunks whose float64
            copies fit in it.

    Returns:
        ``(mean cosine, share unmoved)`` as 0-d float64 tensors on the weight's
        device (no host synchronisation).

    Raises:
        ValueError: If the shapes differ.
    """
    if weight.shape != start.shape:
        raise ValueError(
            f"`weight` has shape {tuple(weight.shape)} but `start` has {tuple(start.shape)}; "
            "drift compares one layer with itself."
        )
    rows = weight.detach().reshape(weight.shape[0], -1)
    starts = start.detach().reshape(start.shape[0], -1)
    per_row = max(rows.shape[1], 1) * 8 * 3  # two float64 copies and one product
    chunk = max(1, chunk_bytes // per_row)
    cosines = []
    for first in range(0, rows.shape[0], chunk):
        now = rows[first : first + chunk].to(torch.float64)
        ref = starts[first : first + chunk].to(device=now.device, dtype=torch.float64)
        dot = (now * ref).sum(dim=1)
        sq_now = (now * now).sum(dim=1)
        sq_ref = (ref * ref).sum(dim=1)
        # sqrt(x * x) == x exactly in IEEE arithmetic: an unchanged filter has cosine 1.0.
        cosine = dot / torch.sqrt(sq_now * sq_ref)
        zero_now, zero_ref = sq_now == 0, sq_ref == 0
        cosine = torch.where(zero_now & zero_ref, torch.ones_like(cosine), cosine)
        cosine = torch.where(zero_now ^ zero_ref, torch.zeros_like(cosine), cosine)
        cosines.append(cosine.clamp(-1.0, 1.0))
    cosine = torch.cat(cosines)
    unmoved = (cosine >= unmoved_cosine).to(torch.float64)
    return cosine.mean(), unmoved.mean()


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class TrackingParams:
    """How a history was recorded.

    Attributes:
        analysis: The parameters of every snapshot's ``analyze`` (definition, eps,
            kernel selection, depth method, version).
        every: Steps between snapshots (``0``: snapshots only where asked).
        unmoved_cosine: Cosine from which a filter counts as unmoved.
        reference_step: Step of the drift reference (the first snapshot).
        label: Model label of the rows.
        n_layers: Measured layers per snapshot.
        version: filterstats version.
    """

    analysis: AnalysisParams = field(default_factory=AnalysisParams)
    every: int = 100
    unmoved_cosine: float = UNMOVED_COSINE
    reference_step: int | None = None
    label: str = "model"
    n_layers: int = 0
    version: str = __version__

    def to_json_dict(self) -> dict[str, Any]:
        """The parameters as a JSON-ready dict.

        Returns:
            Nested dicts of plain values.
        """
        return asdict(self)

    @classmethod
    def from_json_dict(cls, payload: Mapping[str, Any]) -> TrackingParams:
        """Parameters read back from ``to_json_dict``.

        Args:
            payload: What ``to_json_dict`` gave (unknown keys are ignored).

        Returns:
            The parameters.
        """
        known = {f.name for f in fields(AnalysisParams)}
        analysis = AnalysisParams(**{k: v for k, v in payload["analysis"].items() if k in known})
        own = {f.name for f in fields(cls)} - {"analysis"}
        return cls(analysis=analysis, **{k: v for k, v in payload.items() if k in own})


@dataclass(frozen=True)
class HistoryRow(MetricAttributes):
    """One layer at one snapshot.

    Metric values (those of ``analyze`` and ``drift_cosine``, ``drift_unmoved``) are
    read as attributes (``row.diversity``).

    Attributes:
        step: Training step of the snapshot.
        model: Model label.
        layer: Full module path.
        module_type: Class name of the module.
        depth: Graph depth; ``None`` when unknown.
        conv_depth: Conv depth rank; ``None`` when unknown.
        conv_depth_norm: Normalised conv depth (NaN when unknown).
        in_channels: Input channels.
        out_channels: Output channels (filters).
        groups: Convolution groups; ``None`` when unknown.
        kind: ``"dense"``, ``"grouped"`` or ``"depthwise"`` (empty when unknown).
        kernel_size: Kernel size as text (``"3x3"``).
        n_filters: Kernels (``C_out * C_in / groups``).
        n_nonsparse: Non-sparse kernels at this snapshot.
        shared_with: Other modules using the same weight, ``;``-separated.
        metrics: ``{metric: value}``.
    """

    step: int
    model: str
    layer: str
    module_type: str
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

    def layer_row(self) -> LayerRow:
        """The row as ``analyze`` gives it.

        Returns:
            A [`LayerRow`][filterstats.LayerRow] without the drift columns.
        """
        values = {k: v for k, v in self.metrics.items() if k not in DRIFT_METRICS}
        meta = {name: getattr(self, name) for name in _LAYER_META}
        return LayerRow(**meta, metrics=values)


_META = tuple(f.name for f in fields(HistoryRow) if f.name != "metrics")
_LAYER_META = tuple(name for name in _META if name != "step")
_INT_COLUMNS = {f.name for f in fields(HistoryRow) if str(f.type).startswith("int")}
_STR_COLUMNS = {f.name for f in fields(HistoryRow) if str(f.type) == "str"}


@dataclass(frozen=True, eq=False)
class FilterHistory(Sequence[HistoryRow]):
    """Per-layer filter metrics over training steps: step x layer x metric.

    A read-only sequence of [`HistoryRow`][filterstats.tracking.HistoryRow], ordered
    by step, then layer (module order). The skipped convolutions (same at every
    snapshot: the structure is resolved once) are listed once in ``skipped``.

    Attributes:
        rows: One row per (snapshot, measured layer).
        params: How the history was recorded.
        skipped: The convolutions not measured, as ``analyze`` lists them
            (``status="skipped"`` with their reason).
    """

    rows: tuple[HistoryRow, ...]
    params: TrackingParams = field(default_factory=TrackingParams)
    skipped: tuple[LayerRow, ...] = ()

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[HistoryRow]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> HistoryRow:  # type: ignore[override]
        return self.rows[index]

    @property
    def steps(self) -> tuple[int, ...]:
        """Steps of the snapshots, in order."""
        return tuple(dict.fromkeys(row.step for row in self.rows))

    @property
    def layers(self) -> tuple[str, ...]:
        """Measured layers, in module order."""
        return tuple(dict.fromkeys(row.layer for row in self.rows))

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metric columns: those of the metric table held, then the drift columns."""
        return metric_table.in_table_order(name for row in self.rows for name in row.metrics)

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names of the exported table, in order."""
        return (*_META[:-1], *self.metrics, "shared_with")

    def report(self, step: int) -> FilterReport:
        """The snapshot at one step as the ``FilterReport`` that ``analyze`` gives.

        Args:
            step: A step of ``steps``.

        Returns:
            The measured layers (drift columns left out), then the skipped ones.

        Raises:
            KeyError: If there is no snapshot at ``step``.
        """
        rows = [row.layer_row() for row in self.rows if row.step == step]
        if not rows:
            raise KeyError(f"no snapshot at step {step}; steps: {list(self.steps)[:10]}")
        return FilterReport((*rows, *self.skipped), self.params.analysis)

    def values(self, metric: str) -> dict[str, list[float]]:
        """One metric over the steps, per layer.

        Args:
            metric: A column of ``metrics``.

        Returns:
            ``{layer: [value at each step of steps]}`` (NaN where missing).
        """
        if metric not in self.metrics:
            raise KeyError(f"unknown metric {metric!r}; metrics: {', '.join(self.metrics)}")
        index = {step: i for i, step in enumerate(self.steps)}
        result = {layer: [math.nan] * len(index) for layer in self.layers}
        for row in self.rows:
            result[row.layer][index[row.step]] = row.metrics.get(metric, math.nan)
        return result

    def by_depth_bin(
        self, *, bins: int = 4, first_bin: bool = True, include_lowest: bool = False
    ) -> list[dict[str, Any]]:
        """The metrics pooled per (step, depth bin), weighted as ``depth_profile`` pools.

        The metrics of the metric table are pooled by
        [`aggregate_rows`][filterstats.depth_bins.aggregate_rows] (the paper's
        weights); the drift columns by ``out_channels`` (a mean over output filters).

        Args:
            bins: Equal-width bins of ``conv_depth_norm``.
            first_bin: The first conv depth in its own bin.
            include_lowest: Close the lowest bin on the left (``bins=1,
                first_bin=False, include_lowest=True``: all layers in one bin).

        Returns:
            One record per (step, non-empty bin): ``step``, ``bin``, ``bin_index``,
            ``n_layers`` and one column per metric.
        """
        from filterstats.depth_bins import aggregate_rows, assign_depth_bins, depth_bin_labels

        labels = depth_bin_labels(bins, first_bin=first_bin, include_lowest=include_lowest)
        layers = {row.layer: row for row in self.rows}
        assigned = dict(
            zip(
                layers,
                assign_depth_bins(
                    [r.conv_depth for r in layers.values()],
                    [r.conv_depth_norm for r in layers.values()],
                    bins=bins,
                    first_bin=first_bin,
                    include_lowest=include_lowest,
                ),
            )
        )
        drift = [m for m in DRIFT_METRICS if m in self.metrics]
        records = []
        for step in self.steps:
            rows = [row for row in self.rows if row.step == step]
            for index, label in enumerate(labels):
                members = [row for row in rows if assigned[row.layer] == label]
                if not members:
                    continue
                pooled = aggregate_rows(
                    [row.layer_row() for row in members],
                    drop_sparse=self.params.analysis.drop_sparse,
                )
                weight = [float(row.out_channels or 0) for row in members]
                for name in drift:
                    values = [row.metrics.get(name, math.nan) for row in members]
                    kept = [(v, w) for v, w in zip(values, weight) if math.isfinite(v)]
                    total = sum(w for _, w in kept)
                    pooled[name] = sum(v * w for v, w in kept) / total if total else math.nan
                records.append(
                    {"step": step, "bin": label, "bin_index": index, "n_layers": len(members),
                     **pooled}
                )  # fmt: skip
        return records

    # ------------------------------------------------------------- exports
    def to_records(self) -> list[dict[str, Any]]:
        """Rows as flat dicts.

        Returns:
            One dict per row, keys in ``columns`` order.
        """
        metrics = self.metrics
        return [
            {**{name: getattr(row, name) for name in _META[:-1]},
             **{name: float(row.metrics.get(name, math.nan)) for name in metrics},
             "shared_with": row.shared_with}
            for row in self.rows
        ]  # fmt: skip

    def to_pandas(self) -> Any:
        """The history as a long DataFrame (needs ``filterstats[pandas]``).

        Returns:
            One row per (step, layer); ``df.attrs["filterstats"]`` holds the parameters.
        """
        pd = require("pandas", extra="pandas")
        frame = pd.DataFrame(self.to_records(), columns=list(self.columns))
        for name in _INT_COLUMNS:
            frame[name] = frame[name].astype("Int64")
        frame.attrs["filterstats"] = self.params.to_json_dict()
        return frame

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write (or return) the history as the CSV file ``CSVSink`` writes.

        Args:
            path: File to write (atomically); ``None`` returns the text only.

        Returns:
            The CSV text (read back with [`read_history`][filterstats.read_history]).
        """
        text = _csv_header(self.params, self.skipped, self.columns)
        text += _csv_rows(self.to_records(), self.columns)
        if path is not None:
            with atomic_target(path, example="history.csv") as temporary:
                temporary.write_text(text, encoding="utf-8")
        return text

    def to_parquet(self, path: str | os.PathLike[str]) -> None:
        """Write the history as Parquet (needs ``filterstats[pandas]``).

        Args:
            path: File to write; parameters and skipped layers go into the schema
                metadata (read back with ``read_history``).
        """
        pa = require("pyarrow", extra="pandas")
        pq = require("pyarrow.parquet", extra="pandas")
        records = self.to_records()
        table = pa.Table.from_pylist(records) if records else pa.table({})
        meta = {b"filterstats-history": json.dumps(_header_payload(self.params, self.skipped))}
        table = table.replace_schema_metadata(meta)
        with atomic_target(path, example="history.parquet") as temporary:
            pq.write_table(table, temporary)

    # ------------------------------------------------------------- display
    def plot(
        self,
        metrics: Sequence[str] | None = None,
        *,
        bins: int = 4,
        fig: Any = None,
    ) -> Any:
        """Each metric over the steps, one line per depth bin (needs ``filterstats[plot]``).

        Args:
            metrics: Metrics to show; default the metric table's default ones and
                ``drift_cosine``.
            bins: Depth bins (see ``by_depth_bin``).
            fig: A matplotlib Figure to draw into; default a new one (no pyplot).

        Returns:
            The Figure, one panel per metric.
        """
        from filterstats.plotting import _new_figure, _title

        shown = list(metrics) if metrics is not None else [
            m for m in (*metric_table.default_metrics(), "drift_cosine") if m in self.metrics
        ]  # fmt: skip
        for name in shown:
            if name not in self.metrics:
                raise KeyError(f"unknown metric {name!r}; metrics: {', '.join(self.metrics)}")
        records = self.by_depth_bin(bins=bins)
        figure = _new_figure(fig, (3.2 * max(len(shown), 1), 2.8))
        axes = figure.subplots(1, max(len(shown), 1), squeeze=False)[0]
        labels = list(
            dict.fromkeys(r["bin"] for r in sorted(records, key=lambda r: r["bin_index"]))
        )
        for ax, name in zip(axes, shown):
            for position, label in enumerate(labels):
                points = [(r["step"], r[name]) for r in records if r["bin"] == label]
                ax.plot(*zip(*points), marker=".", color=f"C{position}", label=f"depth {label}")
            ax.set_xlabel("step")
            ax.set_title(_title(name) if name not in DRIFT_METRICS else _DRIFT_TITLES[name])
        axes[0].legend(fontsize="small")
        return figure

    def table(self, *, max_rows: int = 30) -> str:
        """The history as text: per step, the metrics pooled over all measured layers.

        Args:
            max_rows: Steps shown before eliding the middle.

        Returns:
            The table as text (``to_pandas()`` has every layer).
        """
        records = self.by_depth_bin(bins=1, first_bin=False, include_lowest=True)
        shown = [m for m in (*metric_table.default_metrics(), *DRIFT_METRICS) if m in self.metrics]
        head = ["step", "layers", *shown]
        lines = [[str(r["step"]), str(r["n_layers"]), *(fmt(r[m]) for m in shown)] for r in records]
        if len(lines) > max_rows:
            half = max_rows // 2
            lines = [*lines[:half], ["..."] + [""] * (len(head) - 1), *lines[-half:]]
        params = self.params
        title = (
            f"FilterHistory: {params.label} — {len(self.steps)} snapshots of "
            f"{plural(len(self.layers), 'layer')}, {len(self.skipped)} skipped "
            f"(every={params.every}, "
            f"definition={params.analysis.definition}, eps={params.analysis.eps}, "
            f"kernel={params.analysis.kernel_size}, unmoved: cosine >= {params.unmoved_cosine}); "
            "pooled over all layers"
        )
        return render_table(title, head, lines)

    def __repr__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        """Pooled table per step for notebooks, the title as caption."""
        records = self.by_depth_bin(bins=1, first_bin=False, include_lowest=True)
        shown = [m for m in (*metric_table.default_metrics(), *DRIFT_METRICS) if m in self.metrics]
        caption = self.table().split("\n", 1)[0]
        return html_table(records, ["step", "n_layers", *shown], caption=caption)


_DRIFT_TITLES = {
    "drift_cosine": "cosine to first snapshot",
    "drift_unmoved": "share of filters unmoved",
}


# --------------------------------------------------------------------------- CSV
def _header_payload(params: TrackingParams, skipped: Sequence[LayerRow]) -> dict[str, Any]:
    return {
        "params": params.to_json_dict(),
        "skipped": [{"layer": row.layer, "module_type": row.module_type, "reason": row.reason}
                    for row in skipped],
    }  # fmt: skip


def _csv_header(params: TrackingParams, skipped: Sequence[LayerRow], columns: Sequence[str]) -> str:
    payload = json.dumps(_header_payload(params, skipped), sort_keys=True)
    buffer = io.StringIO()
    buffer.write(_CSV_MAGIC + payload + "\n")
    csv.writer(buffer, lineterminator="\n").writerow(columns)
    return buffer.getvalue()


def _csv_rows(records: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    for record in records:
        writer.writerow({k: csv_value(v) for k, v in record.items()})
    return buffer.getvalue()


def _convert(name: str, value: Any) -> Any:
    if name in _INT_COLUMNS:
        return None if value in (None, "") else int(value)
    if name in _STR_COLUMNS:
        return "" if value is None else str(value)
    number = math.nan if value in (None, "", "nan") else float(value)
    return math.nan if math.isnan(number) else number


def _history_from(
    payload: Mapping[str, Any], records: Sequence[Mapping[str, Any]]
) -> FilterHistory:
    params = TrackingParams.from_json_dict(payload["params"])
    skipped = tuple(
        LayerRow(model=params.label, layer=s["layer"], module_type=s["module_type"],
                 status="skipped", reason=s["reason"])
        for s in payload.get("skipped", [])
    )  # fmt: skip
    rows = []
    for record in records:
        # a column a history written by an older version lacks gets its default
        meta = {name: _convert(name, record[name]) for name in _META if name in record}
        values = {k: _convert(k, v) for k, v in record.items() if k not in meta}
        rows.append(HistoryRow(**meta, metrics=values))
    return FilterHistory(tuple(rows), params, skipped)


def _complete_snapshots(text: str) -> tuple[dict[str, Any], list[dict[str, str]], int, str]:
    """Parse a history CSV, keeping only complete snapshots.

    Returns:
        ``(header payload, records, byte length of the complete part, header line)``.
    """
    if not text.startswith(_CSV_MAGIC):
        raise ValueError("not a filterstats history CSV (no '# filterstats-history' line)")
    first_end = text.index("\n") + 1
    payload = json.loads(text[len(_CSV_MAGIC) : first_end - 1])
    header_end = text.find("\n", first_end) + 1
    if header_end == 0:  # killed while writing the column line
        return payload, [], 0, ""
    head = text[first_end:header_end]
    columns = next(csv.reader([head]))
    n_layers = int(payload["params"].get("n_layers", 0) or 0)
    body_end = text.rfind("\n") + 1  # a line without its newline is an unfinished write
    lines = text[header_end:body_end].splitlines(keepends=True)
    records: list[dict[str, str]] = []
    complete = header_end
    offset = header_end
    pending: list[dict[str, str]] = []
    step: str | None = None
    for line in lines:
        values = next(csv.reader([line]))
        offset += len(line)
        if len(values) != len(columns):
            break  # a torn line: nothing after it is trusted
        record = dict(zip(columns, values))
        if record["step"] != step:
            pending, step = [], record["step"]
        pending.append(record)
        if len(pending) == n_layers:
            records.extend(pending)
            pending, step, complete = [], None, offset
    return payload, records, complete, text[:header_end]


def read_history(path: str | os.PathLike[str]) -> FilterHistory:
    """Read a history written by ``CSVSink``, ``to_csv`` or ``to_parquet``.

    A CSV file of a run that is still training, or was killed, reads up to its last
    complete snapshot (a snapshot whose every layer row was written).

    Args:
        path: A ``.csv`` or ``.parquet`` file.

    Returns:
        The [`FilterHistory`][filterstats.FilterHistory].

    Raises:
        ValueError: If the file is not a filterstats history.
    """
    target = Path(path)
    if target.suffix.lower() == ".parquet":
        pq = require("pyarrow.parquet", extra="pandas")
        table = pq.read_table(target)
        meta = (table.schema.metadata or {}).get(b"filterstats-history")
        if meta is None:
            raise ValueError(f"{target} is not a filterstats history (no metadata)")
        return _history_from(json.loads(meta), table.to_pylist())
    text = target.read_text(encoding="utf-8")
    try:
        payload, records, _, _ = _complete_snapshots(text)
    except ValueError as error:
        raise ValueError(f"{target}: {error}") from None
    return _history_from(payload, records)


# --------------------------------------------------------------------------- sinks
@runtime_checkable
class Sink(Protocol):
    """Where a tracker sends each snapshot as it is taken (CSV, TensorBoard, W&B...).

    ``write`` gets the snapshot's rows (one per layer) and the pooled values per
    depth bin; ``close`` is called by ``FilterTracker.close``. A sink may also have
    ``last_step`` (steps up to it are already recorded: a resumed run skips them)
    and ``load_reference``/``save_reference`` (drift reference weights kept across a
    restart).
    """

    def write(
        self,
        rows: Sequence[HistoryRow],
        pooled: Sequence[Mapping[str, Any]],
        params: TrackingParams,
    ) -> None:
        """Record one snapshot.

        Args:
            rows: The snapshot's rows, one per measured layer.
            pooled: The same values pooled per depth bin
                (``FilterHistory.by_depth_bin`` records of this snapshot).
            params: How the history is recorded.
        """

    def close(self) -> None:
        """Release files or handles."""


class CSVSink:
    """Append-only CSV file of a history, readable while training runs.

    The file starts with a ``# filterstats-history`` line (the parameters, the
    skipped convolutions) and the column line; each snapshot then appends its rows
    in one write, flushed and ``fsync``-ed. A killed run leaves a file that
    [`read_history`][filterstats.read_history] reads up to its last complete
    snapshot. Opening an existing file resumes it: an unfinished last snapshot is cut
    off, ``last_step`` tells the tracker which steps are recorded (they are not
    written again), and the drift reference weights (``PATH.reference.pt``, written
    atomically at the first snapshot) are loaded so that drift stays measured from
    the run's first snapshot. A file written with other parameters is refused.

    Args:
        path: The CSV file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.reference_path = self.path.with_name(self.path.name + ".reference.pt")
        self._file: Any = None
        self._columns: tuple[str, ...] = ()
        self._existing: dict[str, Any] | None = None
        self.last_step: int | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            text = self.path.read_text(encoding="utf-8")
            payload, records, complete, head = _complete_snapshots(text)
            self._existing = payload
            if complete == 0:  # header torn: start again
                self._existing = None
                self.path.unlink()
            else:
                with self.path.open("r+b") as handle:
                    handle.truncate(len(text[:complete].encode("utf-8")))
                self._columns = tuple(next(csv.reader([head.split("\n")[1]])))
                if records:
                    self.last_step = int(records[-1]["step"])

    def load_reference(self) -> tuple[int, dict[str, Tensor]] | None:
        """The drift reference of a resumed run.

        Returns:
            ``(step, {layer: weight})`` on the CPU, or ``None`` for a new file.
        """
        if self._existing is None or not self.reference_path.exists():
            return None
        loaded = torch.load(self.reference_path, map_location="cpu", weights_only=True)
        return int(loaded["step"]), dict(loaded["weights"])

    def save_reference(self, weights: Mapping[str, Tensor], step: int) -> None:
        """Keep the drift reference weights beside the CSV file (atomically).

        Args:
            weights: ``{layer: weight}`` at the first snapshot.
            step: Its step.
        """
        if self._existing is not None and self.reference_path.exists():
            return
        with atomic_target(self.reference_path) as temporary:
            torch.save({"step": step, "weights": {k: v.cpu() for k, v in weights.items()}},
                       temporary)  # fmt: skip

    def write(
        self,
        rows: Sequence[HistoryRow],
        pooled: Sequence[Mapping[str, Any]],
        params: TrackingParams,
    ) -> None:
        """Append one snapshot's rows (one write, flushed, fsync-ed).

        Args:
            rows: The snapshot's rows, one per measured layer.
            pooled: Values per depth bin (not written: the file holds every layer).
            params: How the history is recorded (stated in the file's first line).
        """
        history = FilterHistory(tuple(rows), params)
        if self._file is None:
            self._open(history, params)
        text = _csv_rows(history.to_records(), self._columns)
        self._file.write(text)
        self._file.flush()
        os.fsync(self._file.fileno())

    def set_skipped(self, skipped: Sequence[LayerRow]) -> None:
        """The skipped convolutions to state in the file's header line.

        Args:
            skipped: Rows of the skipped convolutions, with their reasons.
        """
        self._skipped = tuple(skipped)

    def _open(self, history: FilterHistory, params: TrackingParams) -> None:
        if self._existing is not None:
            old = TrackingParams.from_json_dict(self._existing["params"])
            if _comparable(old) != _comparable(params):
                raise ValueError(
                    f"{self.path} holds a history recorded with other parameters "
                    f"({_comparable(old)} vs {_comparable(params)}); write to a new file."
                )
            if tuple(history.columns) != self._columns:
                raise ValueError(
                    f"{self.path} has columns {self._columns}, this run {history.columns}; "
                    "write to a new file."
                )
            self._file = self.path.open("a", encoding="utf-8", newline="")
            return
        self._columns = tuple(history.columns)
        header = _csv_header(params, getattr(self, "_skipped", ()), self._columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8", newline="")
        self._file.write(header)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _comparable(params: TrackingParams) -> dict[str, Any]:
    payload = params.to_json_dict()
    payload.pop("version", None)
    payload["analysis"] = {k: v for k, v in payload["analysis"].items() if k != "version"}
    return payload


# --------------------------------------------------------------------------- snapshot
def layer_drift(
    filters: FilterSet, reference: Mapping[str, Tensor], *, unmoved_cosine: float = UNMOVED_COSINE
) -> list[dict[str, float]]:
    """``drift_cosine`` and ``drift_unmoved`` of every layer, one host transfer per device.

    Args:
        filters: The layers now.
        reference: ``{layer name: weight}`` at the reference snapshot.
        unmoved_cosine: As in [`filter_drift`][filterstats.tracking.filter_drift].

    Returns:
        One ``{"drift_cosine": ..., "drift_unmoved": ...}`` per layer of ``filters``.
    """
    by_device: dict[torch.device, list[int]] = {}
    for i, layer in enumerate(filters):
        by_device.setdefault(layer.weight.device, []).append(i)
    results: dict[int, list[float]] = {}
    for indices in by_device.values():
        stacked = torch.stack([
            torch.stack(filter_drift(filters[i].weight, reference[filters[i].name],
                                     unmoved_cosine=unmoved_cosine))
            for i in indices
        ]).cpu()  # fmt: skip
        for i, values in zip(indices, stacked.tolist()):
            results[i] = values
    return [
        {"drift_cosine": results[i][0], "drift_unmoved": results[i][1]} for i in range(len(filters))
    ]


def measure_snapshot(
    filters: FilterSet,
    reference: Mapping[str, Tensor],
    step: int,
    *,
    label: str,
    unmoved_cosine: float = UNMOVED_COSINE,
    options: Mapping[str, Any] | None = None,
) -> tuple[FilterReport, tuple[HistoryRow, ...]]:
    """One snapshot: ``analyze`` of the layers, and their drift from ``reference``.

    Args:
        filters: The layers (already resolved and selected).
        reference: ``{layer name: weight}`` of the first snapshot.
        step: Step of the rows.
        label: Model label.
        unmoved_cosine: Threshold of ``drift_unmoved``.
        options: ``analyze`` arguments (``kernel_size``, ``eps``, ``definition``,
            ``normalize``, ``nan_policy``).

    Returns:
        ``(the FilterReport, one HistoryRow per measured layer)``.
    """
    from filterstats.analysis import analyze

    report = analyze(filters, label=label, **dict(options or {}))
    drift = layer_drift(filters, reference, unmoved_cosine=unmoved_cosine)
    rows = tuple(
        HistoryRow(step=step, **{n: getattr(r, n) for n in _LAYER_META},
                   metrics={**r.metrics, **d})
        for r, d in zip(report.measured, drift)
    )  # fmt: skip
    return report, rows


# --------------------------------------------------------------------------- tracker
class FilterTracker:
    """Record the filter metrics of a model every ``every`` training steps.

    Call ``step(step)`` after each optimizer step, or pass ``optimizer=`` (or call
    ``attach(optimizer)``) to take them from the optimizer's post-step hook (its
    ``n``-th step after attaching is step ``start_step + n - 1``, as
    ``enumerate`` counts). A snapshot is taken at every step divisible by ``every``,
    and at the first step seen (the drift reference). Each snapshot holds
    [`analyze`][filterstats.analyze]'s per-layer metrics of the weights as they are
    and the drift columns (see [`filterstats.tracking`][filterstats.tracking]).

    The model is never changed: no copy, no mode or device change, no hook on it, no
    random numbers drawn; its weights are read detached, on their device.

    Args:
        model: Any ``nn.Module`` (wrappers such as DDP, ``torch.compile`` and a
            LightningModule holding one network are unwrapped, as everywhere).
        every: Steps between snapshots; ``0``: only on ``snapshot()``.
        definition: ``"paper"`` or ``"torchconvquality"``.
        sink: Where each snapshot goes as it is taken (a [`CSVSink`][filterstats.CSVSink],
            a TensorBoard or W&B sink, or a sequence of them); the tracker keeps
            its own history too.
        optimizer: Attach to this optimizer's post-step hook.
        start_step: Step number of the first hooked optimizer step.
        label: Model label of the rows; default the model's class name.
        kernel_size: Kernel-size selection, as in ``analyze``.
        eps: Sparsity threshold, as in ``analyze``.
        normalize: As in ``analyze``.
        nan_policy: As in ``analyze``.
        unmoved_cosine: Cosine to the first snapshot from which a filter counts as
            unmoved (``drift_unmoved``).
        example_inputs: As in ``analyze`` (depth of models that do not trace).
        depth: As in ``analyze``.

    Examples:
        >>> import torch, filterstats as fs
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> with fs.FilterTracker(net, every=2, optimizer=opt) as tracker:
        ...     for _ in range(5):
        ...         net(torch.randn(2, 3, 8, 8)).sum().backward(); opt.step(); opt.zero_grad()
        >>> tracker.history().steps
        (0, 2, 4)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int = 100,
        definition: Definition = "paper",
        sink: Sink | Sequence[Sink] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        start_step: int = 0,
        label: str | None = None,
        kernel_size: KernelSelection = (3, 3),
        eps: float = 0.01,
        normalize: bool | None = None,
        nan_policy: NanPolicy = "propagate",
        unmoved_cosine: float = UNMOVED_COSINE,
        example_inputs: Any = None,
        depth: str = "auto",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"`model` must be an nn.Module (the network being trained), got "
                f"{type(model).__name__}; for saved checkpoints use fs.trajectory."
            )
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(
                f"`every` must be an int >= 0 (steps between snapshots), got {every!r}"
            )
        if not -1.0 <= float(unmoved_cosine) <= 1.0:
            raise ValueError(f"`unmoved_cosine` must be in [-1, 1], got {unmoved_cosine!r}")
        self.model = model
        self.every = every
        self._options: dict[str, Any] = {
            "kernel_size": kernel_size, "eps": eps, "definition": definition,
            "normalize": normalize, "nan_policy": nan_policy,
        }  # fmt: skip
        self._resolve: dict[str, Any] = {"example_inputs": example_inputs, "depth": depth,
                                         "kernel_size": kernel_size}  # fmt: skip
        self.unmoved_cosine = float(unmoved_cosine)
        self._label = label
        self._label_used = label or "model"
        if sink is None:
            self._sinks: list[Any] = []
        elif isinstance(sink, Sequence):
            self._sinks = list(sink)
        else:
            self._sinks = [sink]
        self._structure: FilterSet | None = None
        self._modules: dict[str, nn.Module] = {}
        self._reference: dict[str, Tensor] = {}
        self._reference_step: int | None = None
        self._rows: list[HistoryRow] = []
        self._skipped: tuple[LayerRow, ...] = ()
        self._params: TrackingParams | None = None
        self._last_step: int | None = None
        self._handle: Any = None
        self._hook_step = start_step
        resumed = [getattr(s, "last_step", None) for s in self._sinks]
        self._resumed_to = max((s for s in resumed if s is not None), default=None)
        if optimizer is not None:
            self.attach(optimizer, start_step=start_step)

    # ------------------------------------------------------------- hooks
    def attach(self, optimizer: torch.optim.Optimizer, *, start_step: int | None = None) -> None:
        """Take snapshots from ``optimizer``'s post-step hook (one optimizer at a time).

        Args:
            optimizer: A ``torch.optim.Optimizer``.
            start_step: Step number of the next optimizer step (default: go on counting).
        """
        if self._handle is not None:
            raise RuntimeError("the tracker is already attached to an optimizer; close() first")
        if not hasattr(optimizer, "register_step_post_hook"):
            raise TypeError(
                f"`optimizer` must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if start_step is not None:
            self._hook_step = start_step

        def hook(_optimizer: Any, _args: Any, _kwargs: Any) -> None:
            step = self._hook_step
            self._hook_step += 1
            self.step(step)

        self._handle = optimizer.register_step_post_hook(hook)

    def close(self) -> None:
        """Remove the optimizer hook and close the sinks (the history stays readable)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        for sink in self._sinks:
            sink.close()

    def __enter__(self) -> FilterTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- snapshots
    def due(self, step: int) -> bool:
        """Whether ``step(step)`` takes a snapshot (cheap: no tensor is touched).

        Args:
            step: The training step.

        Returns:
            ``True`` when a snapshot is due.
        """
        if self._resumed_to is not None and step <= self._resumed_to:
            return False
        if self._last_step is not None and step <= self._last_step:
            return False
        first = self._reference_step is None and self._resumed_to is None
        return first or (self.every > 0 and step % self.every == 0)

    def step(self, step: int) -> bool:
        """Call after each optimizer step; takes a snapshot when one is due.

        Args:
            step: The training step (increasing).

        Returns:
            Whether a snapshot was taken.
        """
        if not self.due(step):
            return False
        self.snapshot(step)
        return True

    def snapshot(self, step: int) -> None:
        """Take a snapshot now, whatever ``every`` says.

        Args:
            step: The training step it is recorded under (greater than the last one).
        """
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"`step` must increase: {step} after a snapshot at {self._last_step}")
        if self._structure is None:
            self._resolve_structure(step)
        filters = self._current_filters()
        report, rows = measure_snapshot(
            filters, self._reference, step, label=self._label_used,
            unmoved_cosine=self.unmoved_cosine, options=self._options,
        )  # fmt: skip
        if self._params is None:
            self._skipped = report.skipped
            self._params = TrackingParams(
                analysis=report.params, every=self.every, unmoved_cosine=self.unmoved_cosine,
                reference_step=self._reference_step, label=self._label_used,
                n_layers=len(filters),
            )  # fmt: skip
            for sink in self._sinks:
                if hasattr(sink, "set_skipped"):
                    sink.set_skipped(self._skipped)
        self._rows.extend(rows)
        self._last_step = step
        if self._sinks:
            pooled = FilterHistory(rows, self._params).by_depth_bin()
            for sink in self._sinks:
                sink.write(rows, pooled, self._params)

    def _resolve_structure(self, step: int) -> None:
        """Layers, depths and skipped convolutions, once; the drift reference weights."""
        from filterstats.extract import conv_modules
        from filterstats.resolve import extract_filters

        structure = extract_filters(self.model, argument="model", **self._resolve)
        if not structure.layers:
            raise ValueError(
                f"no convolution of {structure.source or 'the model'} is selected with "
                f"kernel_size={self._resolve['kernel_size']!r}; pass kernel_size=None to "
                "track every convolution."
            )
        _, conv_names = conv_modules(self.model)
        self._modules = {name: module for module, names in conv_names.items() for name in names}
        self._structure = structure
        self._label_used = self._label or structure.source or "model"
        reference: dict[str, Tensor] | None = None
        for sink in self._sinks:
            loaded = sink.load_reference() if hasattr(sink, "load_reference") else None
            if loaded is not None and reference is None:
                step, reference = loaded
        if reference is not None:
            if sorted(reference) != sorted(layer.name for layer in structure.layers):
                raise ValueError(
                    "the stored drift reference does not hold the layers of this model; "
                    "write the history to a new file."
                )
            self._reference = {
                layer.name: reference[layer.name].to(layer.weight.device, layer.weight.dtype)
                for layer in structure.layers
            }
        else:
            self._reference = {
                layer.name: layer.weight.detach().clone() for layer in structure.layers
            }
            for sink in self._sinks:
                if hasattr(sink, "save_reference"):
                    sink.save_reference(self._reference, step)
        self._reference_step = step

    def _current_filters(self) -> FilterSet:
        """The structure's layers with the weights as they are now (detached views)."""
        from filterstats.extract import _read_conv

        assert self._structure is not None
        layers = []
        for layer in self._structure.layers:
            module = self._modules.get(layer.name)
            if module is None:
                raise RuntimeError(f"layer {layer.name!r} is no longer in the model")
            read = _read_conv(layer.name, module)
            if not isinstance(read, ConvLayer) or read.weight.shape != layer.weight.shape:
                what = getattr(read, "reason", "its weight changed shape")
                raise RuntimeError(f"layer {layer.name!r} cannot be read any more: {what}")
            layers.append(replace(layer, weight=read.weight))
        structure = self._structure
        return FilterSet(
            tuple(layers), structure.skipped, structure.depth_method, structure.source,
            kernel_size=structure.kernel_size, order=structure.order,
        )  # fmt: skip

    # ------------------------------------------------------------- results
    @property
    def steps(self) -> tuple[int, ...]:
        """Steps of the snapshots taken by this tracker."""
        return tuple(dict.fromkeys(row.step for row in self._rows))

    def history(self) -> FilterHistory:
        """The snapshots so far, as a frozen table (later snapshots do not change it).

        Returns:
            A [`FilterHistory`][filterstats.FilterHistory].
        """
        params = self._params or TrackingParams(every=self.every, label=self._label or "model")
        return FilterHistory(tuple(self._rows), params, self._skipped)
