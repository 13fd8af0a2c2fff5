"""``filterstats demo``: the shipped normal/robust pair, analysed and compared offline."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from filterstats.cli._common import OutputDirectory, emit

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)

HELP = "analyse and compare the shipped demo pair (normal vs robust)"

EXAMPLES = """examples:
  filterstats demo                      # table and summary on stdout, files in filterstats-demo/
  filterstats demo --out results/ --quiet"""


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` command.

    Args:
        commands: What ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The command's parser.
    """
    parser: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help=HELP,
        description=HELP,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, default=Path("filterstats-demo"), help="output directory"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="one shipped seed (default: all, as pairs)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or warnings")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``filterstats demo``.

    Args:
        args: The parsed arguments.

    Returns:
        0.
    """
    out = OutputDirectory(args.out)
    from filterstats.analysis import analyze
    from filterstats.compare import compare
    from filterstats.demo import available_seeds, load_pair
    from filterstats.html import report as html_report
    from filterstats.results import FilterReport

    seeds = available_seeds() if args.seed is None else (args.seed,)
    robust, normal = [], []
    for seed in seeds:
        pair = load_pair(seed=seed)
        robust.append(analyze(pair.robust, label=f"robust-seed{seed}"))
        normal.append(analyze(pair.normal, label=f"normal-seed{seed}"))
    comparison = compare(robust, normal, labels=("robust", "normal"))
    summary = comparison.summary()
    shown = f"seed {seeds[0]}" if len(seeds) > 1 else f"the seed-{seeds[0]} pair"
    emit(f"Layer tables of {shown} (every seed: layers.csv); the summary below pairs "
         f"{len(seeds)} seed(s): {', '.join(str(seed) for seed in seeds)}.")  # fmt: skip
    emit("")
    emit(FilterReport.concat([robust[0], normal[0]]).table())
    emit("")
    emit(repr(summary))
    with out as staging:
        FilterReport.concat(robust + normal).to_csv(staging / "layers.csv")
        summary.to_csv(staging / "summary.csv")
        _save_figures(comparison, staging)
        html_report(comparison, staging / "report.html")
    emit(f"\nwrote {args.out}/: {', '.join(out.written)}")
    return 0


def _save_figures(comparison: Any, directory: Path) -> None:
    try:
        figure = comparison.plot()
    except ModuleNotFoundError as error:
        logger.warning("figures skipped: %s", error)
        return
    figures = figure if isinstance(figure, (list, tuple)) else [figure]
    for index, item in enumerate(figures):
        item = getattr(item, "figure", item)
        item.savefig(directory / f"metrics_by_depth{'' if index == 0 else index}.png", dpi=120)
