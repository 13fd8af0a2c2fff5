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
    import logging

    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    # The package's log lines (warnings of a scan's workers) print above the bar, not
    # into it.
    with logging_redirect_tqdm(loggers=[logging.getLogger("filterstats")]):
        yield from tqdm(
            items, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True
        )
