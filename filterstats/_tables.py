"""Shared behaviour of the frozen result tables: a sequence of rows, records, CSV, JSON, pandas."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, fields
from typing import Any

from filterstats._files import atomic_target, atomic_write_text
from filterstats._optional import require

__all__ = ["MetricAttributes", "RowTable", "csv_value", "html_cell", "html_table", "json_value"]


class MetricAttributes:
    """Mixin: the values of a ``metrics`` mapping read as attributes (``row.diversity``).

    Rows hold their metrics in one mapping keyed by the names of
    [`filterstats.metric_table`][filterstats.metric_table], so that a new metric needs
    no new field anywhere. A metric of the table that a row does not hold reads as
    NaN (``_missing_metric``); any other unknown name is an ``AttributeError``.
    """

    metrics: Any
    _missing_metric: Any = math.nan

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            values = object.__getattribute__(self, "metrics")
        except AttributeError:
            raise AttributeError(name) from None
        if name in values:
            return values[name]
        from filterstats.metric_table import names

        if name in names() and self._missing_metric is not None:
            return self._missing_metric
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


class RowTable:
    """Mixin for frozen dataclasses that hold ``rows`` of one dataclass type.

    Subclasses set ``_row_type`` to the row dataclass; its field names are the
    DataFrame's columns. A table that says how it was made returns that from
    ``_export_provenance``; every export then carries it in one form: CSV, a leading
    ``# filterstats {json}`` comment line; JSON, ``{"filterstats": ..., "rows": [...]}``;
    pandas, ``frame.attrs["filterstats"]``; Parquet, the schema metadata key
    ``filterstats``.
    """

    rows: tuple[Any, ...]
    _row_type: type

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names of the exported table, in order."""
        return tuple(f.name for f in fields(self._row_type))

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)

    def to_records(self) -> list[dict[str, Any]]:
        """Rows as plain dicts.

        Returns:
            One dict per row, keys in field order.
        """
        return [asdict(row) for row in self.rows]

    def _export_provenance(self) -> dict[str, Any] | None:
        """How the table was made, for its exports (JSON-safe); ``None``: nothing to say."""
        return None

    def _repr_html_(self) -> str:
        """The table as HTML for notebooks; its title (how it was made) as the caption."""
        caption = repr(self).split("\n", 1)[0]
        return html_table(self.to_records(), self.columns, caption=caption)

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write (or return) the rows as CSV, one header line; no pandas needed.

        NaN is written as ``nan`` and ``None`` as an empty field, as in
        [`FilterReport.to_csv`][filterstats.FilterReport.to_csv].

        Args:
            path: File to write (atomically); ``None`` returns the text only.

        Returns:
            The CSV text.
        """
        buffer = io.StringIO()
        provenance = self._export_provenance()
        if provenance is not None:
            buffer.write("# filterstats " + json.dumps(provenance, sort_keys=True) + "\n")
        writer = csv.DictWriter(buffer, fieldnames=list(self.columns), lineterminator="\n")
        writer.writeheader()
        for record in self.to_records():
            writer.writerow({key: csv_value(value) for key, value in record.items()})
        text = buffer.getvalue()
        if path is not None:
            atomic_write_text(path, text, example="table.csv")
        return text

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write (or return) the rows as a JSON list of records; NaN becomes ``null``.

        Args:
            path: File to write (atomically); ``None`` returns the text only.

        Returns:
            The JSON text.
        """
        records = [
            {key: json_value(value) for key, value in record.items()}
            for record in self.to_records()
        ]
        provenance = self._export_provenance()
        payload: Any = (
            records if provenance is None else {"filterstats": provenance, "rows": records}
        )
        text = json.dumps(payload, indent=1, allow_nan=False)
        if path is not None:
            atomic_write_text(path, text, example="table.json")
        return text

    def to_pandas(self) -> Any:
        """Rows as a pandas DataFrame (needs ``filterstats[pandas]``).

        Returns:
            A DataFrame with one row per row of the table.
        """
        pd = require("pandas", extra="pandas")
        frame = pd.DataFrame(self.to_records(), columns=list(self.columns))
        provenance = self._export_provenance()
        if provenance is not None:
            frame.attrs["filterstats"] = provenance
        return frame

    def to_parquet(self, path: str | os.PathLike[str]) -> None:
        """Write the rows as Parquet (needs ``filterstats[pandas]``).

        How the table was made goes into the schema metadata (key ``filterstats``, JSON).

        Args:
            path: File to write (atomically).
        """
        pa = require("pyarrow", extra="pandas")
        pq = require("pyarrow.parquet", extra="pandas")
        frame = self.to_pandas()
        frame.attrs = {}
        table = pa.Table.from_pandas(frame, preserve_index=False)
        provenance = self._export_provenance()
        if provenance is not None:
            meta = dict(table.schema.metadata or {})
            meta[b"filterstats"] = json.dumps(provenance).encode()
            table = table.replace_schema_metadata(meta)
        with atomic_target(path, example="table.parquet") as temporary:
            pq.write_table(table, temporary)


def csv_value(value: Any) -> Any:
    """A value as the CSV writers of the result tables write it (NaN as ``nan``)."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def json_value(value: Any) -> Any:
    """A value as JSON can hold it: NaN and inf as ``None`` (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None  # as pandas writes them too
    if isinstance(value, (list, tuple)):
        return [json_value(item) for item in value]
    return value


def html_cell(value: Any, digits: int = 4) -> tuple[str, str]:
    """One table cell as HTML text and its kind (``"num"`` or ``"text"``).

    Floats get ``digits`` significant digits (``0.8123``, ``-9.05e-05``), so columns stay
    narrow; NaN is ``nan``, ``None`` empty.

    Args:
        value: The value.
        digits: Significant digits of floats.

    Returns:
        ``(escaped text, kind)``.
    """
    if value is None:
        return "", "text"
    if isinstance(value, bool):
        return str(value), "text"
    if isinstance(value, int):
        return str(value), "num"
    if isinstance(value, float):
        return ("nan" if math.isnan(value) else f"{value:.{digits}g}"), "num"
    return html.escape(str(value)), "text"


def html_table(
    records: Sequence[dict[str, Any]],
    columns: Sequence[str],
    *,
    caption: str = "",
    table_id: str | None = None,
    max_rows: int | None = 200,
    wrap: Sequence[str] = (),
) -> str:
    """Records as one HTML ``<table class="data">`` (notebooks and the HTML report).

    Args:
        records: One dict per row.
        columns: Columns to show, in order.
        caption: Caption (how the table was made).
        table_id: ``id`` attribute.
        max_rows: Rows shown at most (the rest elided with a count); ``None``: all.
        wrap: Text columns whose cells may wrap (class ``wrap``, e.g. skip reasons);
            every other cell stays on one line.

    Returns:
        The HTML.
    """
    shown = list(records) if max_rows is None else list(records)[:max_rows]
    cells_of = [[html_cell(record.get(column)) for column in columns] for record in shown]
    # A column of text (names, reasons) is left-aligned, its header too; numbers right.
    # Inline, so that notebooks (whose style sheets right-align every cell) agree.
    text_column = [
        column in wrap or all(kind == "text" for _, kind in (row[i] for row in cells_of))
        for i, column in enumerate(columns)
    ]
    left = ' style="text-align: left"'
    head = "".join(
        f"<th{left if is_text else ''}>{html.escape(str(c))}</th>"
        for c, is_text in zip(columns, text_column)
    )
    body = []
    for row in cells_of:
        cells = []
        for column, (text, kind), is_text in zip(columns, row, text_column):
            css = "wrap" if column in wrap else kind
            style = left if kind == "text" or is_text else ""
            cells.append(f'<td class="{css}"{style}>{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    if len(shown) < len(records):
        more = len(records) - len(shown)
        body.append(f'<tr><td colspan="{len(columns)}">... {more} more rows</td></tr>')
    ident = f' id="{html.escape(table_id)}"' if table_id else ""
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return (
        f'<table class="data"{ident}>{cap}<thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )
