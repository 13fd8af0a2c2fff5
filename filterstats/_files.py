"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_target", "atomic_write_text", "check_output_file"]


def check_output_file(path: str | os.PathLike[str], *, example: str = "output.txt") -> Path:
    """Check that ``path`` can be written as a file, before any work is done.

    Every message names ``path`` and the fix, never a temporary name.

    Args:
        path: The file to create or replace.
        example: A file name suggested when ``path`` is a directory (``"report.html"``).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        IsADirectoryError: ``path`` is a directory.
        FileNotFoundError: Its directory does not exist.
        NotADirectoryError: Its directory is a file.
        PermissionError: Its directory is not writable.
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(
            f"path: {target} is a directory; give a file name such as {target / example}"
        )
    folder = target.absolute().parent
    if not folder.exists():
        raise FileNotFoundError(
            f"path: {target}: the directory {folder} does not exist; create it first "
            f"(e.g. `pathlib.Path({str(folder)!r}).mkdir(parents=True)`)"
        )
    if not folder.is_dir():
        raise NotADirectoryError(
            f"path: {target}: {folder} is not a directory; give a path inside a directory"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(
            f"path: {target}: no permission to write into {folder}; choose another directory"
        )
    return target


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike[str], *, example: str = "output.txt") -> Iterator[Path]:
    """A temporary path beside ``path``, renamed over ``path`` when the block succeeds.

    The temporary name is unique per process and call, so concurrent writers (threads,
    processes, cluster nodes sharing a directory) never write into the same file; it is
    removed if the block raises. ``path`` is checked first
    ([`check_output_file`][filterstats._files.check_output_file]): a directory, a missing
    or unwritable directory is one error naming ``path``, never the temporary.

    Args:
        path: The file to create or replace.
        example: A file name suggested when ``path`` is a directory.

    Yields:
        The temporary path to write.

    Raises:
        OSError: ``path`` cannot be written (see ``check_output_file``).
    """
    target = check_output_file(path, example=example)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield temporary
        try:
            temporary.replace(target)  # atomic within one file system
        except OSError as error:  # e.g. a directory created at `path` meanwhile
            raise type(error)(f"path: cannot write {target}: {error.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, example: str = "output.txt"
) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically.

    Args:
        path: The file to create or replace.
        text: Its new content.
        example: A file name suggested when ``path`` is a directory.

    Raises:
        OSError: ``path`` cannot be written (see ``check_output_file``).
    """
    with atomic_target(path, example=example) as temporary:
        temporary.write_text(text, encoding="utf-8")
