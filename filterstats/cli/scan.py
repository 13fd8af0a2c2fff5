"""``filterstats scan SPECS --store DIR``: many models into a resumable store.

Exit codes: 0 when every selected model is in the store, 1 when any failed, 2 for a
usage error (one line on stderr). Progress and one line per model go to stderr;
stdout stays empty.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from filterstats.cli._common import (
    UserError,
    add_metric_options,
    add_trust_pickle_option,
    cli_text,
)

__all__ = ["add_parser", "run"]

HELP = "analyse many models into a resumable store"

EXAMPLES = """examples:
  filterstats scan specs.txt --store results/ --workers 2
  filterstats scan specs.txt --store /shared/results --executor slurm --slurm-partition gpu"""


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``scan`` command.

    Args:
        commands: What ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The command's parser.
    """
    parser: argparse.ArgumentParser = commands.add_parser(
        "scan",
        help=HELP,
        description=(
            "Analyse every model spec listed in SPECS (one per line, # comments) into the "
            "store folder DIR, one Parquet file per model. Re-running skips complete models "
            "and retries failed ones. Read the result with filterstats.open_store(DIR)."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    add_trust_pickle_option(parser)
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
    parser.set_defaults(run=run)
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
        args: The parsed arguments.

    Returns:
        0 when every selected model is in the store, 1 when any failed.

    Raises:
        UserError: The specs file cannot be read, or ``--store`` is a file.
    """
    store = Path(args.store)
    if store.exists() and not store.is_dir():
        raise UserError(f"--store {store} is a file; give a folder (created if missing)")
    from filterstats.scanning.runner import ModelOutcome, read_specs, scan

    def report(outcome: ModelOutcome) -> None:
        if args.quiet:
            return
        if outcome.status == "ok":
            _say(f"ok      {outcome.spec} ({outcome.seconds:.1f} s)")
        else:
            _say(f"FAILED  {outcome.spec}: {cli_text(outcome.error)}")

    try:
        specs = read_specs(args.specs)
    except OSError as error:
        raise UserError(f"cannot read SPECS {args.specs!r}: {error.strerror}") from error
    summary = scan(
        specs,
        args.store,
        executor=args.executor,
        workers=args.workers,
        limit=args.limit,
        shard=args.shard,
        raw_filters=args.raw_filters,
        raw_dtype=args.raw_dtype,
        # Each worker resolves the spec with the library's one resolver, as analyze does.
        trust_pickle=args.trust_pickle,
        kernel_size=args.kernel_size,
        eps=args.eps,
        definition=args.definition,
        fingerprint_method=args.fingerprint,
        executor_options=_executor_options(args),
        callback=report,
        progress=not (args.no_progress or args.quiet),
    )
    print(
        f"{len(summary.succeeded)} scanned, {len(summary.skipped)} already in the store, "
        f"{len(summary.failed)} failed; store: {summary.store}",
        file=sys.stderr,
    )
    return 0 if summary.ok else 1
