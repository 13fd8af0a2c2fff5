"""The ``filterstats`` command line: every capability without writing Python.

One module per command (``analyze``, ``compare``, ``demo``, ``zoo``, ``scan``), each
with ``add_parser(commands)`` and ``run(args)``; ``_common`` holds what they share.
Arguments are parsed before any analysis code is imported, so ``--help`` and
``--version`` cost no more than ``import filterstats``.

Exit codes: 0 success; 1 the work ran but something failed (e.g. a scan with failed
models); 2 a user error (bad spec, missing or unreadable file, bad option), reported
as one line on stderr without a traceback; 130 an interrupt. Progress goes to
stderr; tables and machine-readable output to stdout or ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from filterstats._version import __version__
from filterstats.cli import analyze, compare, demo, scan, zoo
from filterstats.cli._common import cli_text, user_errors

__all__ = ["build_parser", "main"]

_COMMANDS = (analyze, compare, demo, zoo, scan)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``filterstats`` command.

    Returns:
        The parser, with one sub-parser per command.
    """
    parser = argparse.ArgumentParser(
        prog="filterstats",
        description="Measure the convolution filters of trained networks: sparsity, "
        "diversity (variance entropy) and orthogonality per layer (Gavrikov & Keuper, 2022).",
        epilog="MODEL specs: a file (.pt, .pth, .bin, .ckpt, .safetensors, a TorchScript "
        "archive, .onnx), demo:normal[@SEED], demo:robust[@SEED], timm:NAME[@FILE], "
        "timm:NAME@random, robustbench:DATASET/THREAT/NAME[@MODEL_DIR].",
    )
    parser.add_argument("--version", action="version", version=f"filterstats {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit code.
    """
    args = build_parser().parse_args(argv)
    quiet = getattr(args, "quiet", False)
    # The command's messages go to stderr through the package's own logger, restored
    # afterwards: main() called in-process leaves the caller's logging as it was.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter())
    package_logger = logging.getLogger("filterstats")
    saved = (package_logger.level, package_logger.propagate)
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.ERROR if quiet else logging.INFO)
    package_logger.propagate = False
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            else:
                # Deprecation notices of other packages (torch, timm) are not the user's
                # to act on; filterstats' own warnings and every other kind are shown.
                for category in (DeprecationWarning, FutureWarning):
                    warnings.filterwarnings("ignore", category=category, module=r"(?!filterstats)")
                warnings.showwarning = _one_line_warning
            return run(args)
    except BrokenPipeError:
        # The reader of stdout went away (`filterstats ... | head`): stop quietly, as
        # other command-line tools do; nothing more can be written there.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except user_errors() as error:
        sys.stderr.write(f"filterstats: error: {cli_text(error)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("filterstats: interrupted\n")
        return 130
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(saved[0])
        package_logger.propagate = saved[1]


class _OneLineFormatter(logging.Formatter):
    """Log records as the command line prints messages (see ``cli_text``).

    Progress lines (INFO) print as they are; warnings and errors, logged or raised as
    Python warnings, share one form: ``filterstats: warning: ...``.
    """

    def format(self, record: logging.LogRecord) -> str:
        text = cli_text(record.getMessage())
        if record.levelno >= logging.ERROR:
            return f"filterstats: error: {text}"
        if record.levelno >= logging.WARNING:
            return f"filterstats: warning: {text}"
        return text


def _one_line_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    sys.stderr.write(f"filterstats: warning: {cli_text(message)}\n")
