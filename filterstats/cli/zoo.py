"""``filterstats zoo list|paper``: the model catalogues, offline."""

from __future__ import annotations

import argparse
from typing import Any

from filterstats.cli._common import emit

__all__ = ["add_parser", "run_list", "run_paper"]

HELP = "model zoos: list what can be analysed (offline)"

EXAMPLES = """examples:
  filterstats zoo list --dataset cifar10 --threat-model Linf
  filterstats zoo paper"""


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``zoo`` command and its ``list`` and ``paper`` sub-commands.

    Args:
        commands: What ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The command's parser.
    """
    parser: argparse.ArgumentParser = commands.add_parser(
        "zoo",
        help=HELP,
        description=HELP,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    zoo_commands = parser.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)
    zoo_list = zoo_commands.add_parser("list", help="RobustBench models, offline")
    zoo_list.add_argument("--dataset", default=None, help="cifar10, cifar100 or imagenet")
    zoo_list.add_argument("--threat-model", default=None, help="Linf, L2 or corruptions")
    zoo_list.add_argument("--format", choices=("table", "csv", "json"), default="table")
    zoo_list.set_defaults(run=run_list)
    zoo_paper = zoo_commands.add_parser("paper", help="the paper's 71 robust/normal pairs")
    zoo_paper.add_argument("--format", choices=("table", "csv", "json"), default="table")
    zoo_paper.set_defaults(run=run_paper)
    return parser


def run_list(args: argparse.Namespace) -> int:
    """Run ``filterstats zoo list``.

    Args:
        args: The parsed arguments.

    Returns:
        0.
    """
    from filterstats.zoo import robustbench

    records = robustbench.list_models(dataset=args.dataset, threat_model=args.threat_model)
    _emit_records([_as_dict(r) for r in records], args.format)
    return 0


def run_paper(args: argparse.Namespace) -> int:
    """Run ``filterstats zoo paper``.

    Args:
        args: The parsed arguments.

    Returns:
        0.
    """
    from filterstats.zoo.catalog import paper_pairs

    _emit_records([_as_dict(r) for r in paper_pairs()], args.format)
    return 0


def _as_dict(record: Any) -> dict[str, Any]:
    import dataclasses

    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return dataclasses.asdict(record)
    return dict(record)


def _emit_records(records: list[dict[str, Any]], fmt: str) -> None:
    import csv
    import io
    import json

    if fmt == "json":
        emit(json.dumps(records, indent=1, default=str))
        return
    if not records:
        emit("(none)")
        return
    columns = list(records[0])
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        emit(buffer.getvalue())
        return
    shown = columns[:6]
    widths = [min(40, max(len(c), *(len(str(r[c])) for r in records))) for c in shown]
    emit("  ".join(c.ljust(w) for c, w in zip(shown, widths)))
    for record in records:
        emit("  ".join(str(record[c])[:40].ljust(w) for c, w in zip(shown, widths)).rstrip())
