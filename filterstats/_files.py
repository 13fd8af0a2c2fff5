"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_target", "atomic_write_text"]


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed over ``path`` when the block succeeds.

    The temporary name is unique per process and call, so concurrent writers (threads,
    processes, cluster nodes sharing a directory) never write into the same file; it is
    removed if the block raises.

    Args:
        path: The file to create or replace.

    Yields:
        The temporary path to write.
    """
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield temporary
        temporary.replace(target)  # atomic within one file system
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically.

    Args:
        path: The file to create or replace.
        text: Its new content.
    """
    with atomic_target(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
