"""Benchmark filterstats.measure against torchconvquality, a per-layer loop and the floor.

Run from the repository root::

    python benchmarks/bench_metrics.py                  # WRN-70-16, WRN-28-10, ResNet-50
    python benchmarks/bench_metrics.py --quick          # seconds; CI smoke test
    python benchmarks/bench_metrics.py --device cuda    # when a GPU exists

Everything runs in one process: per model, one warm-up round, then ``--repeats``
interleaved rounds (filterstats paper, the same without the frequency profile
(``measure(..., frequency=False)``: the pass before it existed), filterstats
torchconvquality, filterstats paper
with the compiled kernel pass switched off (``FILTERSTATS_NATIVE=0``, the torch path;
only when the compiled pass is available), the drop-in
``filterstats.compat.torchconvquality.measure_quality`` (CPU), the authors'
``torchconvquality.measure_quality``, a plain float64 per-layer loop); the table shows
medians, and the speed-up against the authors' package is the median of the
per-round ratios. Each filterstats time includes ``extract_filters(model)`` (torch.fx
tracing for the depth and for which convolutions forward calls), also timed on its own.

Threads are fixed (``--threads``, default 2) and ``OMP_WAIT_POLICY=PASSIVE`` is set
before torch is imported unless already set, so that idle OpenMP threads do not spin
and steal the cores from the next timed call on a small machine.

The floor is computed on the spot, on the same machine, in the same run:

    floor = sum_l C_out,l^2 * D_l / P  +  T_read

with ``D_l = C_in,l / groups * kH * kW``: ``C_out^2 * D`` floating-point operations are
the ``C_out^2 / 2 * D`` multiply-adds of half a Gram matrix (its upper triangle; the
orthogonality needs every pair of output filters once). ``P`` is the measured
matrix-multiply peak (median of a 4096 x 4096 x 4096 fp32 product; fp64 for float64
weights) and ``T_read`` is the measured time of one read of all weights (a ``sum()``
over every layer). Anything else (sparsity, the k*k covariance) needs one read.

Peak extra memory: on CPU, the peak resident set size (``VmHWM`` of ``/proc/self/status``,
reset through ``/proc/self/clear_refs`` before the call) minus the resident size before
it, during the warm-up call of each method; Linux only ("n/a" elsewhere). On CUDA,
``torch.cuda.max_memory_allocated`` minus the allocation before the call.

Agreement: largest absolute difference per metric: filterstats' torchconvquality
definition vs the package (S sparsity, H variance entropy, Hc clean entropy,
O orthogonality); filterstats' paper definition vs the plain float64 loop.

torchconvquality is a test dependency (``pip install 'filterstats[test]'``); without
it the benchmark says so in one line on stderr and runs without its columns.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import architectures

import filterstats as fs
from filterstats import metrics
from filterstats.compat import torchconvquality as compat

FULL_MODELS = ("WRN-70-16", "WRN-28-10", "ResNet-50")
QUICK_MODELS = ("small-cnn", "WRN-16-2")
#: Set to "0", filterstats computes the fused pass in torch instead of compiled code.
NATIVE_SWITCH = "FILTERSTATS_NATIVE"
#: The paper definition without the frequency profile (``measure(..., frequency=False)``).
NO_FREQUENCY = "filterstats (paper), frequency=False"


# ------------------------------------------------------------------------ timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return time.perf_counter() - start, result


def _median_time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    fn()
    return statistics.median(_timed(fn, device)[0] for _ in range(repeats))


def _rss_kib() -> dict[str, int]:
    values = {}
    with Path("/proc/self/status").open() as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def _peak_extra(fn: Callable[[], Any], device: torch.device) -> tuple[float | None, Any]:
    """Run ``fn`` once; return (peak extra bytes or None, result)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before), result
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS
        before = _rss_kib()["VmRSS"]
    except OSError:
        return None, fn()
    result = fn()
    return float(_rss_kib()["VmHWM"] - before) * 1024, result


# ------------------------------------------------------------------------ floor


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int, size: int) -> float:
    """Measured matrix-multiply rate (flop/s), median of ``repeats`` products."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = _median_time(lambda: a @ b, device, repeats)
    return 2.0 * size**3 / seconds


def read_time(weights: list[Tensor], device: torch.device, repeats: int) -> float:
    """Seconds for one read of all weights (a sum per layer)."""
    return _median_time(lambda: [w.sum() for w in weights], device, repeats)


def half_gram_flops(weights: list[Tensor]) -> float:
    """sum_l C_out^2 * D: the flops of the upper-triangle Gram products."""
    return float(sum(w.shape[0] ** 2 * w[0].numel() for w in weights))


# ------------------------------------------------------------------ the methods


def plain_per_layer(weights: list[Tensor], eps: float = 0.01) -> dict[str, Tensor]:
    """The paper's metrics, one layer at a time, in float64, straight from the formulas."""
    sparsity, entropy, ortho = [], [], []
    for weight in weights:
        w = weight.detach().to("cpu", torch.float64)
        rows = w.reshape(w.shape[0] * w.shape[1], -1)
        kernel_max = rows.abs().amax(dim=1)
        layer_max = kernel_max.max()
        sparse = kernel_max <= eps * layer_max if layer_max > 0 else torch.ones_like(kernel_max)
        sparsity.append(sparse.double().mean())
        keep = rows[~sparse.bool()]
        keep = keep / keep.abs().amax(dim=1, keepdim=True)
        if len(keep) < 2:
            entropy.append(torch.tensor(math.nan, dtype=torch.float64))
        else:
            singular = torch.linalg.svdvals(keep - keep.mean(dim=0))
            variance = singular**2
            ratio = variance / variance.sum()
            ratio = ratio[ratio > 0]
            entropy.append(-(ratio * torch.log10(ratio)).sum())
        filters = w.reshape(w.shape[0], -1)
        norms = filters.norm(dim=1, keepdim=True)
        unit = filters / torch.where(norms > 0, norms, 1.0)
        n = filters.shape[0]
        gram = (unit @ unit.T).abs()
        ortho.append(1.0 - (gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))
    return {
        "sparsity": torch.stack(sparsity),
        "diversity": torch.stack(entropy),
        "orthogonality": torch.stack(ortho),
    }


def torchconvquality_values(result: dict[str, dict[str, float]]) -> dict[str, Tensor]:
    def column(key: str) -> Tensor:
        return torch.tensor([layer[key] for layer in result.values()], dtype=torch.float64)

    return {
        "sparsity": column("sparsity"),
        "diversity": column("variance_entropy"),
        "diversity_clean": column("variance_entropy_clean"),
        "orthogonality": column("orthogonality"),
    }


def _dict_agreement(ours: dict[str, dict[str, float]], theirs: dict[str, dict[str, float]]) -> str:
    """Whether the layer and key lists are equal, and the largest difference of any value."""
    same = list(ours) == list(theirs) and all(list(ours[n]) == list(theirs[n]) for n in theirs)
    worst = max(
        0.0
        if math.isnan(theirs[n][k]) and math.isnan(ours[n][k])
        else abs(ours[n][k] - theirs[n][k])
        for n in theirs
        for k in theirs[n]
    )
    return f"keys {'equal' if same else 'DIFFER'}, all 7 values {worst:.0e}"


def _max_diff(ours: Tensor, theirs: Tensor) -> float:
    return float((ours.cpu() - theirs.cpu()).abs().max())


# ------------------------------------------------------------------ one model


def bench_model(
    name: str, device: torch.device, repeats: int, with_reference: bool, torchconvquality: Any
) -> dict[str, Any]:
    model = architectures.build(name)
    filterset = fs.extract_filters(model)
    weights = [layer.weight for layer in filterset]
    if device.type != "cpu":
        weights = [w.to(device) for w in weights]

    def ours(definition: str, frequency: bool = True) -> Callable[[], metrics.LayerMetrics]:
        if device.type == "cpu":
            return lambda: fs.measure(
                fs.extract_filters(model), definition=definition, frequency=frequency
            )
        return lambda: fs.measure(weights, definition=definition, frequency=frequency)

    def torch_only(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            previous = os.environ.get(NATIVE_SWITCH)
            os.environ[NATIVE_SWITCH] = "0"
            try:
                return fn()
            finally:
                if previous is None:
                    del os.environ[NATIVE_SWITCH]
                else:
                    os.environ[NATIVE_SWITCH] = previous

        return run

    methods: dict[str, Callable[[], Any]] = {
        "filterstats (paper)": ours("paper"),
        # The pass as it was before the frequency profile (its one extra moment set).
        NO_FREQUENCY: ours("paper", frequency=False),
        "filterstats (torchconvquality)": ours("torchconvquality"),
    }
    if device.type == "cpu" and fs.kernels.native_pass_available():
        methods["filterstats (paper), torch path only"] = torch_only(ours("paper"))
    if device.type == "cpu":
        # The drop-in: torchconvquality's call and dicts, on one batched measure pass.
        methods["filterstats.compat.torchconvquality"] = lambda: compat.measure_quality(model)
    if with_reference:
        methods["plain per-layer (float64)"] = lambda: plain_per_layer(weights)
    if torchconvquality is not None:
        # The package works on CPU tensors only: the reference always runs on CPU.
        methods["torchconvquality.measure_quality"] = lambda: torchconvquality.measure_quality(
            model
        )

    # Warm-up round: also where peak memory and the results for agreement come from.
    results, memory = {}, {}
    for label, fn in methods.items():
        memory[label], results[label] = _peak_extra(fn, device)
    times: dict[str, list[float]] = {label: [] for label in methods}
    for _ in range(repeats):
        for label, fn in methods.items():
            times[label].append(_timed(fn, device)[0])

    # Single passes, against one read of the weights: the sparsity pass (layer max
    # and per-kernel maxima), the fused pass (the same plus the moments of both
    # entropy variants of the paper definition) and the Gram products.
    first = metrics._layer_pass(weights, 0.01, False, "propagate")
    variants = [(True, True), (False, False)]
    passes = {
        "extract": _median_time(lambda: fs.extract_filters(model), device, repeats),
        "read": read_time(weights, device, repeats),
        "sparsity": _median_time(
            lambda: metrics._layer_pass(weights, 0.01, False, "propagate"), device, repeats
        ),
        "covariance": _median_time(
            lambda: metrics._layer_pass(weights, 0.01, False, "propagate", variants),
            device,
            repeats,
        ),
        "gram": _median_time(
            lambda: metrics._orthogonality_values(
                weights, first, "propagate", metrics.kernels.DEFAULT_CHUNK_BYTES
            ),
            device,
            repeats,
        ),
    }

    agreement = {}
    if torchconvquality is not None:
        tcq = torchconvquality_values(results["torchconvquality.measure_quality"])
        ours_tcq = results["filterstats (torchconvquality)"]
        agreement["filterstats (torchconvquality)"] = (
            f"S {_max_diff(ours_tcq.sparsity, tcq['sparsity']):.0e}, "
            f"H {_max_diff(ours_tcq.diversity, tcq['diversity']):.0e}, "
            f"Hc {_max_diff(ours_tcq.diversity_clean, tcq['diversity_clean']):.0e}, "
            f"O {_max_diff(ours_tcq.orthogonality, tcq['orthogonality']):.0e}"
        )
        if "filterstats.compat.torchconvquality" in results:
            agreement["filterstats.compat.torchconvquality"] = _dict_agreement(
                results["filterstats.compat.torchconvquality"],
                results["torchconvquality.measure_quality"],
            )
    if with_reference:
        plain = results["plain per-layer (float64)"]
        ours_paper = results["filterstats (paper)"]
        agreement["filterstats (paper)"] = (
            f"S {_max_diff(ours_paper.sparsity, plain['sparsity']):.0e}, "
            f"H {_max_diff(ours_paper.diversity, plain['diversity']):.0e}, "
            f"O {_max_diff(ours_paper.orthogonality, plain['orthogonality']):.0e}"
        )
    return {
        "model": name,
        "weights": weights,
        "weight_bytes": sum(w.numel() * w.element_size() for w in weights),
        "n_kernels": sum(w.shape[0] * w.shape[1] for w in weights),
        "times": {label: statistics.median(ts) for label, ts in times.items()},
        # Speed-up per round (each round times every method back to back), then the
        # median: steadier than a ratio of medians when the machine's speed drifts.
        "speedups": {
            label: statistics.median(r / t for r, t in zip(reference_times, ts))
            for label, ts in times.items()
        }
        if (reference_times := times.get("torchconvquality.measure_quality"))
        else {},
        # measure() with the frequency profile over measure() without it, per round.
        "frequency_ratio": statistics.median(
            t / u for t, u in zip(times["filterstats (paper)"], times[NO_FREQUENCY])
        ),
        "memory": memory,
        "agreement": agreement,
        "passes": passes,
    }


def import_reference() -> Any:
    """The torchconvquality package, or ``None`` (with one line on stderr) if absent.

    It is a test dependency, not installed by the README's main command: without it
    the benchmark runs and leaves out its columns.
    """
    try:
        import torchconvquality
    except ModuleNotFoundError as error:
        if error.name == "torchconvquality":
            fix = "pip install 'filterstats[test]' (or torchconvquality==0.3.0)"
        elif error.name is not None and error.name.split(".")[0] == "distutils":
            # torchconvquality 0.3.0 imports distutils, which setuptools provides.
            fix = "pip install 'setuptools<82'"
        else:
            raise
        sys.stdout.flush()
        print(
            f"bench_metrics: torchconvquality cannot be imported ({error}); running without "
            f"its reference columns. For them: {fix}",
            file=sys.stderr,
        )
        return None
    return torchconvquality


def _megabytes(value: float | None) -> str:
    return "n/a" if value is None else f"{max(value, 0.0) / 2**20:.0f} MB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, choices=sorted(architectures.MODELS))
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per model")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="small models, one round")
    parser.add_argument(
        "--no-reference", action="store_true", help="skip torchconvquality and the plain loop"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        # TF32 would break the 1e-6 agreement of the orthogonality (filterstats asks
        # for IEEE float32 itself; this makes the reference and the peak do the same).
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
            torch.backends.cuda.matmul.fp32_precision = "ieee"
        else:
            torch.backends.cuda.matmul.allow_tf32 = False
    models = args.models or (QUICK_MODELS if args.quick else FULL_MODELS)
    repeats = 1 if args.quick else args.repeats
    peak_size = 1024 if args.quick else 4096

    peak32 = matmul_peak(device, torch.float32, repeats + 2, peak_size)
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine())
    )
    print(f"# filterstats.measure benchmark ({'quick' if args.quick else 'full'})\n")
    print(
        f"device: {device.type} ({device_name}); torch {torch.__version__}; "
        f"threads {torch.get_num_threads()}; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; "
        f"repeats {repeats} (median) after one warm-up round"
    )
    print(f"measured fp32 matmul peak: {peak32 / 1e9:.1f} GFLOP/s ({peak_size}^3)")
    compiled = device.type == "cpu" and fs.kernels.native_pass_available()
    print(
        "compiled kernel pass: "
        + ("yes" if compiled else "no (torch path; see docs/performance.md)")
        + "\n"
    )

    reference = None if args.no_reference else import_reference()
    rows, pass_rows, frequency_rows = [], [], []
    for name in models:
        result = bench_model(
            name, device, repeats, with_reference=not args.no_reference, torchconvquality=reference
        )
        floor = half_gram_flops(result["weights"]) / peak32 + result["passes"]["read"]
        for label, seconds in result["times"].items():
            speedup = result["speedups"].get(label)
            rows.append(
                f"| {name} | {label} | {seconds:.3f} | "
                + (f"{speedup:.1f}x" if speedup else "-")
                + f" | {seconds / floor:.2f} | "
                + f"{_megabytes(result['memory'].get(label))} | "
                + f"{result['agreement'].get(label, '')} |"
            )
        frequency_rows.append(
            f"| {name} | {result['times'][NO_FREQUENCY]:.3f} | "
            f"{result['times']['filterstats (paper)']:.3f} | {result['frequency_ratio']:.2f}x |"
        )
        passes = result["passes"]
        pass_rows.append(
            f"| {name} | {result['weight_bytes'] / 2**20:.0f} MB | {floor:.3f} | "
            f"{passes['extract']:.3f} | "
            f"{passes['read']:.3f} | {passes['sparsity']:.3f} "
            f"({passes['sparsity'] / passes['read']:.1f}x) | {passes['covariance']:.3f} "
            f"({passes['covariance'] / passes['read']:.1f}x) | {passes['gram']:.3f} "
            f"({passes['gram'] / (floor - passes['read']):.2f}x) |"
        )
    print(
        "| model | method | seconds | speed-up vs torchconvquality | x floor "
        "| peak extra memory | agreement (max abs diff) |"
    )
    print("|---|---|---:|---:|---:|---:|---|")
    print("\n".join(rows))
    print(
        "\n| model | weights | floor s | extract_filters s | one read s | sparsity pass s (x read) "
        "| fused sparsity + covariance pass s (x read) | Gram pass s (x its floor) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(pass_rows))
    print(
        "\n| model | measure() without frequency profile s | with it s "
        "| ratio (median per round; target <= 1.3x) |"
    )
    print("|---|---:|---:|---:|")
    print("\n".join(frequency_rows))


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # rows appear as measured, even in a file
    main()
