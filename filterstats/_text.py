"""Fixed-width text tables for the ``__repr__`` of result objects."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["fmt", "plural", "render_table"]


def plural(n: int, word: str, plural: str | None = None) -> str:
    """``n`` and ``word``, pluralised: ``"1 layer"``, ``"2 layers"``, ``"0 layers"``.

    Args:
        n: How many.
        word: The singular noun.
        plural: The plural when it is not ``word + "s"``.

    Returns:
        The text.
    """
    return f"{n} {word if n == 1 else plural or word + 's'}"


def fmt(value: float, digits: int = 4) -> str:
    """A float as text: fixed digits, ``"nan"`` for NaN, scientific below 1e-4."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if isinstance(value, int):
        return str(value)
    if value != 0 and abs(value) < 10.0 ** (-digits):
        return f"{value:.{max(digits - 2, 1)}e}"
    return f"{value:.{digits}f}"


def render_table(title: str, head: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """Title line, header and left-aligned columns separated by two spaces."""
    widths = [max([len(h)] + [len(c[i]) for c in lines]) for i, h in enumerate(head)]

    def render(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([title, render(head), *(render(c) for c in lines)])
