"""Shared behaviour of the frozen result tables: a sequence of rows, records, pandas."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, fields
from typing import Any

from filterstats._optional import require

__all__ = ["RowTable"]


class RowTable:
    """Mixin for frozen dataclasses that hold ``rows`` of one dataclass type.

    Subclasses set ``_row_type`` to the row dataclass; its field names are the
    DataFrame's columns.
    """

    rows: tuple[Any, ...]
    _row_type: type

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

    def to_pandas(self) -> Any:
        """Rows as a pandas DataFrame (needs ``filterstats[pandas]``).

        Returns:
            A DataFrame with one row per row of the table.
        """
        pd = require("pandas", extra="pandas")
        return pd.DataFrame(self.to_records(), columns=[f.name for f in fields(self._row_type)])
