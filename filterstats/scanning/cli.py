"""``filterstats scan SPECS.txt --store DIR``: the command line of ``filterstats.scanning``.

``add_parser(subparsers)`` adds the ``scan`` sub-command to the main parser and
``run(args)`` executes it. Exit codes: 0 when every selected model is in the
store, 1 when any failed, 2 for a usage error (one line on stderr). Progress
and one line per model go to stderr; stdout stays empty.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from filterstats.cli import add_metric_options

__all__ = ["add_parser", "main", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``scan`` sub-command.

    Args:
        subparsers: What ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``scan`` parser (its ``func`` default is [`run`][filterstats.scanning.cli.run]).
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "scan",
        help="analyse many models into a resumable store",
        description=(
            "Analyse every model spec listed in SPECS (one per line, # comments) into the "
            "store folder DIR, one Parquet file per model. Re-running skips complete models "
            "and retries failed ones. Read the result with filterstats.open_store(DIR)."
        ),
    )
    parser.add_argument("specs", metavar="SPECS", help="text file with one model spec per line")
    parser.add_argument("--store", required=True, metavar="DIR", help="store folder")
    parser.add_argument("--executor", choices=("local", "slurm", "ray"), default="local")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="local worker processes (1: in this process; default: half the CPUs)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="only the first N specs (after --shard)",
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="i/n",
        help="only every n-th spec from position i (0-based)",
    )
    parser.add_argument(
        "--raw-filters", action="store_true", help="also store every kernel with its layer metadata"
    )
    parser.add_argument("--raw-dtype", choices=("float16", "float32"), default="float16")
    add_metric_options(parser)  # the same --kernel-size, --eps, --definition as analyze
    parser.add_argument(
        "--fingerprint",
        choices=("stat", "sha256"),
        default="stat",
        help="how unchanged weights files are recognised",
    )
    slurm = parser.add_argument_group("slurm (pip install 'filterstats[slurm]')")
    slurm.add_argument("--slurm-partition", default=None)
    slurm.add_argument(
        "--slurm-time", type=int, default=60, metavar="MIN", help="time limit per model, minutes"
    )
    slurm.add_argument("--slurm-mem", type=float, default=None, metavar="GB")
    slurm.add_argument("--slurm-cpus", type=int, default=1)
    slurm.add_argument("--slurm-gpus", type=int, default=0)
    slurm.add_argument("--slurm-array-parallelism", type=int, default=64, metavar="N")
    slurm.add_argument(
        "--slurm-folder",
        default=None,
        metavar="DIR",
        help="submitit logs (default: DIR/slurm-logs)",
    )
    slurm.add_argument(
        "--slurm-cluster",
        choices=("slurm", "local", "debug"),
        default=None,
        help="submitit cluster (default: Slurm if available)",
    )
    ray = parser.add_argument_group("ray (pip install 'filterstats[ray]')")
    ray.add_argument(
        "--ray-address",
        default=None,
        help="running cluster address; default: start a local instance",
    )
    ray.add_argument("--ray-num-cpus", type=int, default=2, help="CPUs of a local instance")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bar, no per-model lines (the summary line stays)",
    )
    parser.set_defaults(func=run, run=run)
    return parser


def _say(line: str) -> None:
    """A line on stderr that does not garble a running progress bar."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print(line, file=sys.stderr)
    else:
        tqdm.write(line, file=sys.stderr)


def _executor_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.executor == "slurm":
        from pathlib import Path

        return {
            "folder": args.slurm_folder or str(Path(args.store) / "slurm-logs"),
            "cluster": args.slurm_cluster,
            "partition": args.slurm_partition,
            "time_min": args.slurm_time,
            "mem_gb": args.slurm_mem,
            "cpus_per_task": args.slurm_cpus,
            "gpus_per_node": args.slurm_gpus,
            "array_parallelism": args.slurm_array_parallelism,
        }
    if args.executor == "ray":
        return {"address": args.ray_address, "num_cpus": args.ray_num_cpus}
    return {}


def run(args: argparse.Namespace) -> int:
    """Run ``filterstats scan``.

    Args:
        args: Parsed arguments of the ``scan`` parser.

    Returns:
        0 when every selected model is in the store, 1 when any failed, 2 for a
        usage error.
    """
    from filterstats.scanning.runner import ModelOutcome, read_specs, scan

    def report(outcome: ModelOutcome) -> None:
        if args.quiet:
            return
        if outcome.status == "ok":
            _say(f"ok      {outcome.spec} ({outcome.seconds:.1f} s)")
        else:
            _say(f"FAILED  {outcome.spec}: {outcome.error}")

    try:
        specs = read_specs(args.specs)
    except OSError as error:
        print(
            f"filterstats scan: error: cannot read SPECS {args.specs!r}: {error.strerror}",
            file=sys.stderr,
        )
        return 2
    try:
        summary = scan(
            specs,
            args.store,
            executor=args.executor,
            workers=args.workers,
            limit=args.limit,
            shard=args.shard,
            raw_filters=args.raw_filters,
            raw_dtype=args.raw_dtype,
            kernel_size=args.kernel_size,
            eps=args.eps,
            definition=args.definition,
            fingerprint_method=args.fingerprint,
            executor_options=_executor_options(args),
            callback=report,
            progress=not (args.no_progress or args.quiet),
        )
    except (ValueError, TypeError, OSError, ModuleNotFoundError) as error:
        print(f"filterstats scan: error: {error}", file=sys.stderr)
        return 2
    print(
        f"{len(summary.succeeded)} scanned, {len(summary.skipped)} already in the store, "
        f"{len(summary.failed)} failed; store: {summary.store}",
        file=sys.stderr,
    )
    return 0 if summary.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``scan`` as a stand-alone command (``python -m filterstats.scanning.cli``).

    Args:
        argv: Arguments after the program name; ``None``: ``sys.argv[1:]``.

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(prog="filterstats")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
