"""``filterstats analyze MODEL``: the per-layer table of one model."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from filterstats.cli._common import (
    UserError,
    add_analysis_options,
    add_output_options,
    analysis_kwargs,
    check_output_file,
    write_report,
)

__all__ = ["add_parser", "run"]

HELP = "per-layer filter statistics of one model"

EXAMPLES = """examples:
  filterstats analyze demo:robust
  filterstats analyze demo:robust --baseline init --baseline-seeds 10
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
    parser.add_argument(
        "--baseline",
        choices=("init",),
        default=None,
        help="also score every metric against the architecture re-initialised with its "
        "reset_parameters (needs a spec that builds the model: demo:, timm:; default: none)",
    )
    parser.add_argument(
        "--baseline-seeds",
        type=_seeds,
        default=None,
        metavar="K",
        help="re-initialisations for --baseline, at least 2 (default: 10)",
    )
    add_output_options(parser, directory=False)
    parser.set_defaults(run=run)
    return parser


def _seeds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be an integer of at least 2, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run ``filterstats analyze``.

    Args:
        args: The parsed arguments.

    Returns:
        0, or 1 when no layer was measured (the table is still written).
    """
    check_output_file(args.out, args.format)
    from filterstats.analysis import analyze

    model: Any = args.model
    baseline: dict[str, Any] = {}
    if args.baseline_seeds is not None and args.baseline is None:
        raise UserError("--baseline-seeds K needs --baseline init")
    if args.baseline is not None:
        from filterstats.baseline import DEFAULT_SEEDS, require_architecture

        try:  # a spec of weights only (a state dict file, ONNX) is one line, before any work
            model = require_architecture(args.model, trust_pickle=args.trust_pickle)
        except TypeError as error:
            raise UserError(
                f"--baseline init needs a model spec that builds the network (demo:..., "
                f"timm:NAME@FILE); {args.model} holds weights only. From Python, load the "
                "weights into the nn.Module and pass it: fs.analyze(net, baseline='init')"
            ) from error
        seeds = DEFAULT_SEEDS if args.baseline_seeds is None else args.baseline_seeds
        baseline = {"baseline": args.baseline, "baseline_seeds": seeds}
    # The spec goes to the library's one resolver, as in Python: the same model, layers
    # and errors through every door.
    report = analyze(
        model, label=args.label or args.model, trust_pickle=args.trust_pickle,
        **analysis_kwargs(args), **baseline,
    )  # fmt: skip
    write_report(report, args.format, args.out)
    if not report.measured:
        # Never an empty report with exit code 0: say why nothing was measured.
        reasons = "; ".join(f"{row.layer}: {row.reason}" for row in report.skipped[:3])
        sys.stderr.write(
            f"filterstats: error: no layer of {args.model} was measured "
            f"({reasons or 'it has no convolution'}"
            f"{'; ...' if len(report.skipped) > 3 else ''}); see --kernel-size\n"
        )
        return 1
    return 0
