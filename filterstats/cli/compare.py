"""``filterstats compare MODEL_A MODEL_B``: two models analysed alike and compared."""

from __future__ import annotations

import argparse
from typing import Any

from filterstats.cli._common import (
    OutputDirectory,
    UserError,
    add_analysis_options,
    add_output_options,
    analysis_kwargs,
    emit,
    require_parquet,
    write_report,
)

__all__ = ["add_parser", "run"]

HELP = "compare two models (e.g. robust vs normal) layer by layer"

EXAMPLES = """examples:
  filterstats compare demo:robust demo:normal --out comparison/
  filterstats compare robust.pt normal.pt --labels robust normal --format json"""


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``compare`` command.

    Args:
        commands: What ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The command's parser.
    """
    parser: argparse.ArgumentParser = commands.add_parser(
        "compare",
        help=HELP,
        description=HELP,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model_a", metavar="MODEL_A", help="first model spec (e.g. robust)")
    parser.add_argument("model_b", metavar="MODEL_B", help="second model spec (e.g. normal)")
    parser.add_argument(
        "--labels", nargs=2, default=("a", "b"), metavar=("A", "B"), help="group labels"
    )
    add_analysis_options(parser)
    add_output_options(parser, directory=True)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``filterstats compare``.

    Args:
        args: The parsed arguments.

    Returns:
        0.
    """
    if args.labels[0] == args.labels[1]:
        raise UserError(f"--labels must be two different names, got {' '.join(args.labels)}")
    out = None if args.out is None else OutputDirectory(args.out)
    if out is None and args.format == "parquet":
        raise UserError("--format parquet needs --out DIR")
    if args.format == "parquet":
        require_parquet()
    from filterstats.analysis import analyze
    from filterstats.compare import compare
    from filterstats.html import report as html_report
    from filterstats.results import FilterReport

    label_a, label_b = args.labels
    reports = [
        analyze(spec, label=label, trust_pickle=args.trust_pickle, **analysis_kwargs(args))
        for spec, label in ((args.model_a, label_a), (args.model_b, label_b))
    ]
    comparison = compare(reports[0], reports[1], labels=(label_a, label_b))
    summary = comparison.summary()
    if out is None:
        if args.format == "table":
            emit(repr(summary))
        else:
            emit(str(summary.to_csv() if args.format == "csv" else summary.to_json()))
        return 0
    with out as staging:
        both = FilterReport.concat(reports)
        write_report(both, "csv", staging / "layers.csv")
        if args.format in ("json", "parquet"):
            write_report(both, args.format, staging / f"layers.{args.format}")
        summary.to_csv(staging / "summary.csv")
        html_report(comparison, staging / "report.html")
    emit(repr(summary))
    emit(f"wrote {args.out}/: {', '.join(out.written)}")
    return 0
