"""The ``filterstats`` command line: every capability without writing Python.

Exit codes: 0 success; 1 the work ran but something failed (e.g. a scan with failed
models); 2 a user error (bad spec, missing or unreadable file, bad option), reported
as one line on stderr without a traceback. Progress goes to stderr; tables and
machine-readable output to stdout or ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from filterstats._files import atomic_write_text

__all__ = ["main"]

logger = logging.getLogger(__name__)

EXAMPLES = {
    "analyze": """examples:
  filterstats analyze demo:robust
  filterstats analyze checkpoints/model.pt --format csv --out model.csv
  filterstats analyze timm:resnet50@resnet50.safetensors --kernel-size all
  filterstats analyze robustbench:cifar10/Linf/Carmon2019Unlabeled@models --device cuda""",
    "compare": """examples:
  filterstats compare demo:robust demo:normal --out comparison/
  filterstats compare robust.pt normal.pt --labels robust normal --format json""",
    "demo": """examples:
  filterstats demo                      # table and summary on stdout, files in filterstats-demo/
  filterstats demo --out results/ --quiet""",
    "zoo": """examples:
  filterstats zoo list --dataset cifar10 --threat-model Linf
  filterstats zoo paper""",
}


class UserError(Exception):
    """An error caused by the input, reported as one line (exit code 2)."""


def _kernel_size(text: str) -> int | tuple[int, ...] | None:
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


def _device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r}; use cpu, cuda, cuda:1 or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"device {text!r} asked for, but torch has no CUDA device here; use --device cpu"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(
            f"device {text!r} asked for, but torch has no MPS device here; use --device cpu"
        )
    if device.type == "meta":
        raise argparse.ArgumentTypeError("--device meta holds no values; use cpu or cuda")
    return text


def add_metric_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--kernel-size``, ``--eps`` and ``--definition`` (shared with ``scan``).

    Args:
        parser: The sub-command's parser.
    """
    parser.add_argument(
        "--kernel-size",
        type=_kernel_size,
        default=(3, 3),
        metavar="K",
        help="kernel size to analyse: 3 (=3x3, the paper's), 1x3, or all (default: 3)",
    )
    parser.add_argument(
        "--eps", type=float, default=0.01, help="sparsity threshold (default: 0.01)"
    )
    parser.add_argument(
        "--definition",
        choices=("paper", "torchconvquality"),
        default="paper",
        help="metric definitions: the paper's code (default) or the authors' package",
    )


def _add_analysis_options(parser: argparse.ArgumentParser) -> None:
    add_metric_options(parser)
    parser.add_argument(
        "--device", type=_device, default=None, help="compute device, e.g. cuda (default: cpu)"
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow checkpoints that need pickled code: they can run arbitrary code, use "
        "only for files you trust (default: refused)",
    )


def _add_output_options(parser: argparse.ArgumentParser, *, directory: bool) -> None:
    if directory:
        parser.add_argument("--out", type=Path, default=None, help="directory for the outputs")
    else:
        parser.add_argument("--out", type=Path, default=None, help="output file")
    parser.add_argument(
        "--format",
        choices=("table", "csv", "json", "parquet"),
        default="table",
        help="output format (default: a readable table; parquet needs --out)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or warnings")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``filterstats`` command.

    Returns:
        The parser, with one sub-parser per command.
    """
    from filterstats import __version__

    parser = argparse.ArgumentParser(
        prog="filterstats",
        description="Measure the convolution filters of trained networks: sparsity, "
        "diversity (variance entropy) and orthogonality per layer (Gavrikov & Keuper, 2022).",
        epilog="MODEL specs: a checkpoint file (.pt, .pth, .bin, .safetensors, .onnx), "
        "demo:normal, demo:robust[@SEED], timm:NAME[@FILE], "
        "robustbench:DATASET/THREAT/NAME[@MODEL_DIR].",
    )
    parser.add_argument("--version", action="version", version=f"filterstats {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXAMPLES.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    analyze = command("analyze", "per-layer filter statistics of one model")
    analyze.add_argument("model", metavar="MODEL", help="model spec")
    analyze.add_argument("--label", default=None, help="model label in the table")
    _add_analysis_options(analyze)
    _add_output_options(analyze, directory=False)
    analyze.set_defaults(run=_run_analyze)

    compare = command("compare", "compare two models (e.g. robust vs normal) layer by layer")
    compare.add_argument("model_a", metavar="MODEL_A", help="first model spec (e.g. robust)")
    compare.add_argument("model_b", metavar="MODEL_B", help="second model spec (e.g. normal)")
    compare.add_argument(
        "--labels", nargs=2, default=("a", "b"), metavar=("A", "B"), help="group labels"
    )
    _add_analysis_options(compare)
    _add_output_options(compare, directory=True)
    compare.set_defaults(run=_run_compare)

    demo = command("demo", "analyse and compare the shipped demo pair (normal vs robust)")
    demo.add_argument("--out", type=Path, default=Path("filterstats-demo"), help="output directory")
    demo.add_argument(
        "--seed", type=int, default=None, help="one shipped seed (default: all, as pairs)"
    )
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress or warnings")
    demo.set_defaults(run=_run_demo)

    zoo = command("zoo", "model zoos: list what can be analysed (offline)")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)
    zoo_list = zoo_commands.add_parser("list", help="RobustBench models, offline")
    zoo_list.add_argument("--dataset", default=None, help="cifar10, cifar100 or imagenet")
    zoo_list.add_argument("--threat-model", default=None, help="Linf, L2 or corruptions")
    zoo_list.add_argument("--format", choices=("table", "csv", "json"), default="table")
    zoo_list.set_defaults(run=_run_zoo_list)
    zoo_paper = zoo_commands.add_parser("paper", help="the paper's 71 robust/normal pairs")
    zoo_paper.add_argument("--format", choices=("table", "csv", "json"), default="table")
    zoo_paper.set_defaults(run=_run_zoo_paper)

    from filterstats.scanning import cli as scan_cli

    scan_cli.add_parser(commands)
    return parser


# ------------------------------------------------------------------ helpers


def _load(spec: str, args: argparse.Namespace) -> Any:
    from filterstats.zoo.specs import load_model

    return load_model(spec, trust_pickle=getattr(args, "trust_pickle", False))


def _emit(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


class _OutputDirectory:
    """Writes into a temporary sibling directory, moved into place only on success."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        parent = self.target.resolve().parent
        if self.target.exists() and not self.target.is_dir():
            raise UserError(f"--out {self.target} exists and is not a directory")
        if not parent.is_dir():
            raise UserError(f"--out: parent directory {parent} does not exist")
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=parent))
        return self.staging

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        try:
            if kind is None:
                self.target.mkdir(exist_ok=True)
                for item in sorted(self.staging.iterdir()):
                    item.replace(self.target / item.name)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)


def _write_report(report: Any, fmt: str, out: Path | None) -> None:
    if fmt == "parquet":
        if out is None:
            raise UserError("--format parquet needs --out FILE")
        report.to_parquet(out)
        return
    if fmt == "table":
        text = report.table(max_rows=10**6)
        if out is not None:
            _atomic_text(out, text + "\n")
        else:
            _emit(text)
        return
    text = report.to_csv() if fmt == "csv" else report.to_json()
    if out is not None:
        _atomic_text(out, text)
    else:
        _emit(text)


def _atomic_text(path: Path, text: str) -> None:
    if path.is_dir():
        raise UserError(f"--out {path} is a directory; give a file name")
    atomic_write_text(path, text)


def _analysis_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "kernel_size": args.kernel_size,
        "eps": args.eps,
        "definition": args.definition,
        "device": args.device,
    }


# ------------------------------------------------------------------ commands


def _run_analyze(args: argparse.Namespace) -> int:
    import filterstats as fs

    model = _load(args.model, args)
    report = fs.analyze(model, label=args.label or args.model, **_analysis_kwargs(args))
    _write_report(report, args.format, args.out)
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    import filterstats as fs

    label_a, label_b = args.labels
    reports = [
        fs.analyze(_load(spec, args), label=label, **_analysis_kwargs(args))
        for spec, label in ((args.model_a, label_a), (args.model_b, label_b))
    ]
    comparison = fs.compare(reports[0], reports[1], labels=(label_a, label_b))
    summary = comparison.summary()
    if args.out is None:
        if args.format == "parquet":
            raise UserError("--format parquet needs --out DIR")
        _emit(repr(summary) if args.format == "table" else _summary_text(summary, args.format))
        return 0
    with _OutputDirectory(args.out) as staging:
        both = fs.FilterReport.concat(reports)
        _write_report(both, "csv", staging / "layers.csv")
        if args.format in ("json", "parquet"):
            _write_report(both, args.format, staging / f"layers.{args.format}")
        summary.to_csv(staging / "summary.csv")
        fs.report(comparison, staging / "report.html")
        written = sorted(path.name for path in staging.iterdir())
    _emit(repr(summary))
    _emit(f"wrote {args.out}/: {', '.join(written)}")
    return 0


def _summary_text(summary: Any, fmt: str) -> str:
    return str(summary.to_csv() if fmt == "csv" else summary.to_json())


def _run_demo(args: argparse.Namespace) -> int:
    import filterstats as fs
    from filterstats import demo

    seeds = demo.available_seeds() if args.seed is None else (args.seed,)
    robust, normal = [], []
    for seed in seeds:
        pair = demo.load_pair(seed=seed)
        robust.append(fs.analyze(pair.robust, label=f"robust-seed{seed}"))
        normal.append(fs.analyze(pair.normal, label=f"normal-seed{seed}"))
    comparison = fs.compare(robust, normal, labels=("robust", "normal"))
    summary = comparison.summary()
    _emit(fs.FilterReport.concat([robust[0], normal[0]]).table())
    _emit("")
    _emit(repr(summary))
    with _OutputDirectory(args.out) as staging:
        fs.FilterReport.concat(robust + normal).to_csv(staging / "layers.csv")
        summary.to_csv(staging / "summary.csv")
        _save_figures(comparison, staging)
        fs.report(comparison, staging / "report.html")
        written = sorted(path.name for path in staging.iterdir())
    _emit(f"\nwrote {args.out}/: {', '.join(written)}")
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


def _run_zoo_list(args: argparse.Namespace) -> int:
    from filterstats.zoo import robustbench

    records = robustbench.list_models(dataset=args.dataset, threat_model=args.threat_model)
    _emit_records([_as_dict(r) for r in records], args.format)
    return 0


def _run_zoo_paper(args: argparse.Namespace) -> int:
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
        _emit(json.dumps(records, indent=1, default=str))
        return
    if not records:
        _emit("(none)")
        return
    columns = list(records[0])
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        _emit(buffer.getvalue())
        return
    shown = columns[:6]
    widths = [min(40, max(len(c), *(len(str(r[c])) for r in records))) for c in shown]
    _emit("  ".join(c.ljust(w) for c, w in zip(shown, widths)))
    for record in records:
        _emit("  ".join(str(record[c])[:40].ljust(w) for c, w in zip(shown, widths)).rstrip())


# ------------------------------------------------------------------ entry point


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        UserError,
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
        ModuleNotFoundError,
        ValueError,
        KeyError,
    ]
    try:
        from filterstats.checkpoints import CheckpointError

        errors.append(CheckpointError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(
        level=logging.ERROR if quiet else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            else:
                warnings.showwarning = _one_line_warning
            return run(args)
    except _user_errors() as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        sys.stderr.write(f"filterstats: error: {message}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("filterstats: interrupted\n")
        return 130


def _one_line_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    sys.stderr.write(f"filterstats: warning: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
