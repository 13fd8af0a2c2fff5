"""Start-up time: ``import filterstats`` and the command line against ``import torch``.

Run: ``python benchmarks/bench_startup.py [--repeats N]``. Prints a Markdown table.
Every sample is a fresh process (``OMP_WAIT_POLICY=PASSIVE``); the commands take
turns, so a change of machine load shifts them alike. ``python -c pass`` is the
floor (the interpreter alone), ``import torch`` the reference: filterstats needs
torch, so what it adds is the difference. The target is ``filterstats --version``
within 0.5 s of ``import torch``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 0.5


def commands() -> list[tuple[str, list[str]]]:
    """(label, argv) of each measured command; the console script if it is installed."""
    python = sys.executable
    script = shutil.which("filterstats", path=str(Path(python).parent))
    cli = [script] if script else [python, "-m", "filterstats"]
    return [
        ("`python -c pass`", [python, "-c", "pass"]),
        ('`python -c "import torch"`', [python, "-c", "import torch"]),
        ('`python -c "import filterstats"`', [python, "-c", "import filterstats"]),
        ("`filterstats --version`", [*cli, "--version"]),
        ("`filterstats --help`", [*cli, "--help"]),
    ]


def sample(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="fresh processes per command")
    args = parser.parse_args()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    measured = commands()
    for _, argv in measured:  # warm the file cache; not counted
        sample(argv, env)
    times: dict[str, list[float]] = {label: [] for label, _ in measured}
    for _ in range(args.repeats):
        for label, argv in measured:
            times[label].append(sample(argv, env))
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load:.1f}; {args.repeats} fresh processes per command, "
        "OMP_WAIT_POLICY=PASSIVE\n"
    )
    reference = statistics.median(times['`python -c "import torch"`'])
    print("| command | median s | min s | max s | minus `import torch`, s |")
    print("|---|---|---|---|---|")
    for label, _ in measured:
        values = times[label]
        median = statistics.median(values)
        print(
            f"| {label} | {median:.3f} | {min(values):.3f} | {max(values):.3f} | "
            f"{median - reference:+.3f} |"
        )
    version = statistics.median(times["`filterstats --version`"]) - reference
    verdict = "met" if version <= TARGET_S else "MISSED"
    print(
        f"\n`filterstats --version` - `import torch`: {version:+.3f} s "
        f"(target <= {TARGET_S} s: {verdict})"
    )


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # rows appear as measured, even in a file
    main()
