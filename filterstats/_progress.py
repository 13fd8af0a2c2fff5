"""Progress bars on stderr when tqdm is installed; silent otherwise."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["progress_bar"]

T = TypeVar("T")


def progress_bar(
    items: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool = True
) -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar on stderr, if enabled and tqdm is installed.

    Args:
        items: What to iterate over.
        total: Number of items, when ``items`` has no length.
        desc: Label shown before the bar.
        enabled: ``False`` never shows a bar.

    Yields:
        The items, unchanged.
    """
    if not enabled or importlib.util.find_spec("tqdm") is None:
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
