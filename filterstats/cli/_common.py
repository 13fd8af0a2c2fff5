"""What the commands share: option types, model loading, output checks, one-line messages.

Nothing here imports a heavy module at import time: ``filterstats --help`` and
``--version`` parse their arguments before any analysis code is loaded, and each
command imports what it needs inside its ``run``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "OUTPUT_NAMES",
    "OutputDirectory",
    "UserError",
    "add_analysis_options",
    "add_metric_options",
    "add_output_options",
    "add_trust_pickle_option",
    "analysis_kwargs",
    "check_output_file",
    "cli_text",
    "emit",
    "require_parquet",
    "user_errors",
    "write_report",
]


class UserError(Exception):
    """An error caused by the input, reported as one line (exit code 2)."""


# ------------------------------------------------------------------ option types


def kernel_size(text: str) -> tuple[int, ...] | None:
    """Parse ``--kernel-size``: ``3`` (3x3), ``1x3``, or ``all``.

    Args:
        text: The option's value.

    Returns:
        The spatial kernel size, or ``None`` for every size.

    Raises:
        argparse.ArgumentTypeError: Not of that form, or not positive.
    """
    if text.lower() in ("all", "none", "any"):
        return None
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"kernel size must look like 3, 3x3 or all, got {text!r}"
        ) from None
    if not parts or any(k < 1 for k in parts):
        raise argparse.ArgumentTypeError(f"kernel size must be positive, got {text!r}")
    if len(parts) == 1:
        return (parts[0], parts[0])
    return parts


def eps(text: str) -> float:
    """Parse ``--eps``: a sparsity threshold in [0, 1), checked before any work.

    Args:
        text: The option's value.

    Returns:
        The threshold.

    Raises:
        argparse.ArgumentTypeError: Not a number in [0, 1).
    """
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(
            f"must be a number in [0, 1) (a fraction of each layer's largest |weight|), "
            f"got {text!r}; the paper uses 0.01"
        )
    return value


def device(text: str) -> str:
    """Check ``--device``: a torch device that exists here.

    Args:
        text: The option's value, e.g. ``cuda:1``.

    Returns:
        ``text``.

    Raises:
        argparse.ArgumentTypeError: Unknown or unavailable device.
    """
    import torch

    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r}; use cpu, cuda, cuda:1 or mps"
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"device {text!r} asked for, but torch has no CUDA device here; use --device cpu"
        )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(
            f"device {text!r} asked for, but torch has no MPS device here; use --device cpu"
        )
    if parsed.type == "meta":
        raise argparse.ArgumentTypeError("--device meta holds no values; use cpu or cuda")
    return text


# ------------------------------------------------------------------ shared options


def add_metric_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--kernel-size``, ``--eps`` and ``--definition`` (analyze, compare, scan).

    Args:
        parser: The command's parser.
    """
    parser.add_argument(
        "--kernel-size",
        type=kernel_size,
        default=(3, 3),
        metavar="K",
        help="kernel size to analyse: 3 (=3x3, the paper's), 1x3, or all (default: 3)",
    )
    parser.add_argument("--eps", type=eps, default=0.01, help="sparsity threshold (default: 0.01)")
    parser.add_argument(
        "--definition",
        choices=("paper", "torchconvquality"),
        default="paper",
        help="metric definitions: the paper's code (default) or the authors' package",
    )


def add_trust_pickle_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--trust-pickle`` (every command that loads model files).

    Args:
        parser: The command's parser.
    """
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow checkpoints that need pickled code: they can run arbitrary code, use "
        "only for files you trust (default: refused)",
    )


def add_analysis_options(parser: argparse.ArgumentParser) -> None:
    """Add the metric options, ``--device`` and ``--trust-pickle`` (analyze, compare).

    Args:
        parser: The command's parser.
    """
    add_metric_options(parser)
    parser.add_argument(
        "--device",
        type=device,
        default=None,
        help="compute device, e.g. cuda (default: where the weights are; files load on the cpu)",
    )
    add_trust_pickle_option(parser)


def add_output_options(parser: argparse.ArgumentParser, *, directory: bool) -> None:
    """Add ``--out``, ``--format`` and ``-q``.

    Args:
        parser: The command's parser.
        directory: ``--out`` names a directory (else a file).
    """
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for the outputs" if directory else "output file",
    )
    parser.add_argument(
        "--format",
        choices=("table", "csv", "json", "parquet"),
        default="table",
        help="output format (default: a readable table; parquet needs --out)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or warnings")


def analysis_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``analyze`` that the metric options set.

    Args:
        args: The parsed arguments.

    Returns:
        ``kernel_size``, ``eps``, ``definition`` and ``device``.
    """
    return {
        "kernel_size": args.kernel_size,
        "eps": args.eps,
        "definition": args.definition,
        "device": args.device,
    }


# ------------------------------------------------------------------ outputs


def emit(text: str) -> None:
    """Write ``text`` and a newline to stdout (the only place commands print results).

    Args:
        text: What to print.
    """
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _check_folder(folder: Path, *, what: str) -> None:
    if not folder.exists():
        raise UserError(f"{what}: the directory {folder} does not exist; create it first")
    if not folder.is_dir():
        raise UserError(f"{what}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{what}: no permission to write into {folder}")


def check_output_file(path: Path | None, fmt: str, *, option: str = "--out") -> None:
    """Check an output file and format before any work.

    Args:
        path: The file, or ``None`` (stdout).
        fmt: The ``--format``; ``parquet`` needs a file and pyarrow.
        option: The option's name, for the message.

    Raises:
        UserError: ``path`` is a directory, its directory is missing or not writable,
            or ``parquet`` has no file.
        ModuleNotFoundError: ``parquet`` without pyarrow; the message names the extra.
    """
    if fmt == "parquet":
        if path is None:
            raise UserError(f"--format parquet needs {option} FILE")
        require_parquet()
    if path is None:
        return
    if path.is_dir():
        raise UserError(f"{option} {path} is a directory; give a file name, e.g. {path}.csv")
    _check_folder(path.absolute().parent, what=f"{option} {path}")


def require_parquet() -> None:
    """Fail before any work when ``--format parquet`` cannot be written.

    Raises:
        ModuleNotFoundError: pyarrow is missing; the message names the extra.
    """
    from filterstats._optional import require

    require("pyarrow", extra="pandas")


#: Every file a command writes into an ``--out`` directory (compare, demo). Only files
#: with these names are ever replaced or removed there.
OUTPUT_NAMES = re.compile(
    r"layers\.(csv|json|parquet)|summary\.csv|report\.html|metrics_by_depth\d*\.png"
)


class OutputDirectory:
    """An ``--out`` directory that holds exactly the files of the run that wrote it.

    Created before any work, it checks the target: not a file, its parent exists and
    is writable, and, if it exists, it holds only files named in
    [`OUTPUT_NAMES`][filterstats.cli._common.OUTPUT_NAMES] (an earlier run's outputs);
    a directory holding anything else is refused, never cleaned. ``with`` yields a
    hidden staging directory beside the target. When the block succeeds the staged
    files replace the target's, and files of an earlier run that this run did not
    write are removed; when it fails, the target is left as it was.

    Args:
        target: The ``--out`` directory (created if missing).
        option: The option's name, for messages.
    """

    def __init__(self, target: Path, *, option: str = "--out") -> None:
        self.target = target
        self.option = option
        self.written: list[str] = []
        self._staging: Path | None = None
        self._check()

    def _check(self) -> None:
        what = f"{self.option} {self.target}"
        if self.target.exists() and not self.target.is_dir():
            raise UserError(f"{what} is a file; give a directory (created if missing)")
        _check_folder(self.target.absolute().parent, what=what)
        if not self.target.is_dir():
            return
        if not os.access(self.target, os.W_OK | os.X_OK):
            raise UserError(f"{what}: no permission to write into it")
        foreign = sorted(
            item.name
            for item in self.target.iterdir()
            if not (item.is_file() and OUTPUT_NAMES.fullmatch(item.name))
        )
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            shown = ", ".join(foreign[:3]) + more
            raise UserError(
                f"{what} holds files filterstats did not write ({shown}); an output directory "
                "holds only the files of one run, so give a new or empty directory (or one "
                "an earlier filterstats run wrote: its files are replaced)"
            )

    def __enter__(self) -> Path:
        parent = self.target.absolute().parent
        self._staging = parent / f".{self.target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        self._staging.mkdir()
        return self._staging

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        assert self._staging is not None
        try:
            if kind is None:
                self._commit(self._staging)
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)

    def _commit(self, staging: Path) -> None:
        self._check()  # again: files may have appeared while the command worked
        new = sorted(item.name for item in staging.iterdir())
        try:
            self.target.mkdir(exist_ok=True)
            for name in new:
                (staging / name).replace(self.target / name)
            for item in self.target.iterdir():
                if item.name not in new and OUTPUT_NAMES.fullmatch(item.name) and item.is_file():
                    item.unlink()  # an earlier run's output that this run did not write
        except OSError as failure:
            raise UserError(
                f"{self.option} {self.target}: cannot write ({failure.strerror or failure})"
            ) from failure
        self.written = new


def write_report(report: Any, fmt: str, out: Path | None) -> None:
    """Print ``report`` or write it to ``out`` (atomically) in the format asked for.

    Args:
        report: A [`FilterReport`][filterstats.FilterReport].
        fmt: ``table``, ``csv``, ``json`` or ``parquet`` (needs ``out``).
        out: The output file; ``None``: stdout.

    Raises:
        UserError: ``parquet`` without ``out``, or ``out`` cannot be written.
    """
    from filterstats._files import atomic_write_text

    if out is None:
        if fmt == "parquet":
            raise UserError("--format parquet needs --out FILE")
        emit(report.table(max_rows=10**6) if fmt == "table" else _export(report, fmt))
        return
    try:
        if fmt == "parquet":
            report.to_parquet(out)
        elif fmt == "table":
            atomic_write_text(out, report.table(max_rows=10**6) + "\n")
        else:
            atomic_write_text(out, _export(report, fmt))
    except OSError as failure:
        raise UserError(f"--out {out}: cannot write ({failure.strerror or failure})") from failure


def _export(report: Any, fmt: str) -> str:
    return str(report.to_csv() if fmt == "csv" else report.to_json())


# ------------------------------------------------------------------ messages


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions reported as one line with exit code 2 (caused by the input).

    ``CheckpointError`` is a ``ValueError``; ``OSError`` covers missing, unreadable
    and unwritable files.

    Returns:
        The exception classes.
    """
    return (UserError, ValueError, KeyError, OSError, ModuleNotFoundError)


#: Hints of library messages written for Python callers, and what they are on the
#: command line, where the option of the command in use is the fix.
CLI_HINTS: tuple[tuple[str, str], ...] = (
    ("`trust_pickle=True` (CLI: --trust-pickle)", "--trust-pickle"),
    ("(trust_pickle=True)", "(--trust-pickle)"),
    ("raw_filters=True (CLI: --raw-filters)", "--raw-filters"),
    (
        " Pass `example_inputs=` for a forward pass.",
        " (From Python, `example_inputs=` gives a traced depth.)",
    ),
    (
        "Pass `checkpoint=` a local file, or `allow_download=True` to let timm download them.",
        "Give a local weights file: timm:NAME@FILE (the command line never downloads).",
    ),
)

# A temporary name of an atomic write: ".NAME[.PID].HEX8.tmp" beside the target.
_TEMPORARY = re.compile(r"\.([^\s/\\'\"]+?)(?:\.\d+)?\.[0-9a-f]{8}\.tmp")


def cli_text(message: object) -> str:
    """A message as the command line prints it: one line, its hints, no temporary names.

    Args:
        message: An exception, a warning or a text.

    Returns:
        The text on one line, with Python-only hints replaced by the command line's
        (see ``CLI_HINTS``) and temporary file names replaced by the file's own.
    """
    if isinstance(message, KeyError) and message.args:
        message = message.args[0]
    text = str(message)
    for python, command_line in CLI_HINTS:
        text = text.replace(python, command_line)
    text = _TEMPORARY.sub(r"\1", text)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
