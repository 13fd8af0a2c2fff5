"""Peak memory and time of ``pca_basis`` / ``filter_divergence`` streaming over files.

Run: ``OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_streaming.py`` (``--quick`` for a
small run). Writes two groups of synthetic models to a temporary folder as state-dict
files (16 layers of ``W x W`` 3x3 kernels each, ``W`` from ``--kernels``) and measures,
each in a fresh process, the peak resident memory above what the imports take
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``; Linux) of

* ``one model``: resolving the largest single model (``extract_filters``) and holding it;
* ``all models``: every model resolved and held at once (what loading a list of
  models before calling ``filter_divergence`` does);
* ``pca_basis`` and ``filter_divergence`` given the list of file paths (streaming).

Prints a Markdown table: peak memory above the imports and against ``one model``, and
seconds per model load. ``filter_divergence`` loads each file three times (basis,
range, histograms). It runs twice: as is, and with glibc's mmap threshold fixed
(``MALLOC_MMAP_THRESHOLD_``): by default glibc raises the threshold after a large
free and then keeps freed model memory in its heap, which shows as peak memory that
no object holds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

LAYERS = 16


def write_models(folder: Path, n_per_group: int, kernels: int) -> tuple[list[str], list[str]]:
    width = max(2, round(math.sqrt(kernels / LAYERS)))
    groups: tuple[list[str], list[str]] = ([], [])
    for side, name in enumerate(("robust", "normal")):
        for index in range(n_per_group):
            generator = torch.Generator().manual_seed(1000 * side + index)
            state = {}
            for layer in range(LAYERS):
                weight = torch.randn(width, width, 3, 3, generator=generator) * 0.05
                if side == 0:
                    weight[:, :, 1, 1] += 0.01  # a small shift of the centre tap
                state[f"layer{layer}.weight"] = weight
            path = folder / f"{name}_{index}.pt"
            torch.save(state, path)
            groups[side].append(str(path))
    return groups


def _status_mib(field: str) -> float:
    """``VmRSS``/``VmHWM`` of this process from /proc, in MiB (Linux)."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]


def child(mode: str, paths_a: list[str], paths_b: list[str]) -> dict[str, float]:
    import filterstats as fs
    import filterstats.zoo.specs  # imported on first use otherwise

    base = _status_mib("VmRSS")
    try:  # reset the high-water mark: the peak of importing torch does not count
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    start = time.perf_counter()
    held = None
    loads = 0
    if mode == "one":
        held = fs.extract_filters(max(paths_a + paths_b, key=lambda p: Path(p).stat().st_size))
        loads = 1
    elif mode == "all":
        held = [fs.extract_filters(p) for p in paths_a + paths_b]
        loads = len(held)
    elif mode == "pca":
        fs.pca_basis(paths_a + paths_b)
        loads = len(paths_a) + len(paths_b)
    elif mode == "divergence":
        fs.filter_divergence(paths_a, paths_b, depth_bins=10, n_null=200)
        loads = 3 * (len(paths_a) + len(paths_b))
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    del held
    return {"base_mib": base, "peak_mib": peak, "seconds": seconds, "loads": loads}


def run_child(
    mode: str, paths_a: list[str], paths_b: list[str], threads: int, extra_env: dict | None = None
) -> dict:
    import filterstats

    # The child imports the filterstats this process would import.
    package_root = str(Path(filterstats.__file__).resolve().parent.parent)
    path = os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--threads", str(threads),
         "--paths", json.dumps([paths_a, paths_b])],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path, **(extra_env or {})},
    )  # fmt: skip
    if done.returncode:
        raise SystemExit(f"bench_streaming: the {mode!r} run failed:\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=4, help="models per group (4)")
    parser.add_argument("--kernels", type=int, default=2_000_000,
                        help="3x3 kernels per model (2,000,000; a WRN-28-10 has 4 M)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 models of 100,000 kernels")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        paths_a, paths_b = json.loads(args.paths)
        print(json.dumps(child(args.child, paths_a, paths_b)))
        return
    if args.quick:
        args.models, args.kernels = 2, 100_000
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"threads {args.threads}, {args.models}+{args.models} models of "
          f"{args.kernels:,} 3x3 kernels (float32 state dicts)\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        paths_a, paths_b = write_models(Path(folder), args.models, args.kernels)
        largest = max(Path(p).stat().st_size for p in paths_a + paths_b) / 2**20
        results = {m: run_child(m, paths_a, paths_b, args.threads)
                   for m in ("one", "all", "pca", "divergence")}  # fmt: skip
        # glibc raises its mmap threshold after large frees, and then keeps freed model
        # memory in the heap; a fixed threshold shows what is really held.
        results["divergence_fixed"] = run_child("divergence", paths_a, paths_b, args.threads,
                                                {"MALLOC_MMAP_THRESHOLD_": "131072"})  # fmt: skip
    one = results["one"]["peak_mib"] - results["one"]["base_mib"]
    print(f"largest model file: {largest:.0f} MiB; after imports: "
          f"{results['one']['base_mib']:.0f} MiB resident\n")  # fmt: skip
    print("| run | peak MiB above imports | x one model | model loads | s per load |")
    print("|---|---|---|---|---|")
    names = {"one": "one model held", "all": "all models held", "pca": "pca_basis(paths)",
             "divergence": "filter_divergence(paths)",
             "divergence_fixed": "filter_divergence(paths), fixed mmap threshold"}  # fmt: skip
    for mode, title in names.items():
        r = results[mode]
        above = r["peak_mib"] - r["base_mib"]
        per_load = r["seconds"] / r["loads"] if r["loads"] else math.nan
        print(f"| {title} | {above:.0f} | {above / one:.2f} | {r['loads']} | {per_load:.2f} |")


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # rows appear as measured, even in a file
    main()
