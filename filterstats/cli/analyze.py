"""``filterstats analyze MODEL``: the per-layer table of one model."""

from __future__ import annotations

import argparse
from typing import Any

from filterstats.cli._common import (
    add_analysis_options,
    add_output_options,
    analysis_kwargs,
    check_output_file,
    load_model_arg,
    write_report,
)

__all__ = ["add_parser", "run"]

HELP = "per-layer filter statistics of one model"

EXAMPLES = """examples:
  filterstats analyze demo:robust
  filterstats analyze checkpoints/model.pt --format csv --out model.csv
  filterstats analyze timm:resnet50@resnet50.safetensors --kernel-size all
  filterstats analyze robustbench:cifar10/Linf/Carmon2019Unlabeled@models --device cuda"""


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``analyze`` command.

    Args:
        commands: What ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The command's parser.
    """
    parser: argparse.ArgumentParser = commands.add_parser(
        "analyze",
        help=HELP,
        description=HELP,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="model spec")
    parser.add_argument("--label", default=None, help="model label in the table")
    add_analysis_options(parser)
    add_output_options(parser, directory=False)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``filterstats analyze``.

    Args:
        args: The parsed arguments.

    Returns:
        0.
    """
    check_output_file(args.out, args.format)
    from filterstats.analysis import analyze

    model = load_model_arg(args.model, trust_pickle=args.trust_pickle)
    report = analyze(model, label=args.label or args.model, **analysis_kwargs(args))
    write_report(report, args.format, args.out)
    return 0
