"""Benchmark conv_spectra against the published per-frequency SVD loop and torch baselines.

Run from the repository root::

    python benchmarks/bench_spectra.py            # WRN-28-10 at 32x32 (tens of minutes)
    python benchmarks/bench_spectra.py --quick    # WRN-16-2: a smoke run
    python benchmarks/bench_spectra.py --device cuda

Everything runs in one process, on the same model (seeded weights, ``architectures.py``):

All singular values, circular padding assumed (Sedghi, Gupta & Long's setting; every
WRN layer is then exact):

- ``numpy loop``: the method as published: per layer, ``numpy.fft.fft2`` of the kernel
  at the input size (of the polyphase kernel for strided layers), then
  ``numpy.linalg.svd(compute_uv=False)`` of the ``c_out x c_in`` matrix at every
  frequency, one at a time, complex128. A full run takes hours here, so per layer the
  SVDs of ``--numpy-frequencies`` frequencies are timed and the time is extrapolated
  to all of them (the FFT is timed in full); the table says so.
- ``torch svdvals``: per layer, ``torch.fft.fft2`` and one batched
  ``torch.linalg.svdvals`` over all frequencies, complex128.
- ``filterstats``: ``conv_spectra(padding="circular", singular_values=True)``:
  conjugate symmetry (half the frequencies), batched over frequencies and same-shape
  layers, chunked to ``max_memory``; float64: ``eigvalsh`` of the Gram matrices built
  from the kernel's tap cross-products; float32 (``--float32``): ``svdvals`` of the
  complex64 transfer matrices.

Spectral norms (certified upper bounds within ``tol``):

- ``power iteration`` (``--power-iterations N``, 0 skips it): the naive baseline: per
  layer, all transfer matrices in memory, N batched complex matrix-vector products
  each way (a lower estimate, no guarantee).
- ``filterstats certificate``: ``conv_spectra(padding="circular")`` and
  ``padding="model"`` (the model's zero padding: bounds, plus the test-input lower
  bound): Gram matrices from the taps, Lanczos lower bound, Cholesky certificates.
- ``filterstats gram`` (``--gram``): the same with ``norm_method="gram"`` (the Gram
  iteration, the previous default).

Floors: the bytes each method must move at least (every frequency's ``r x r``
complex128 Gram matrix written once and read once by its factorisation or
eigensolver; the transfer matrices, ``16 p q`` bytes, for the Gram iteration's first
step) and the flops it must spend (certificate: the tap products, ``(T^2 + T) n r^2``,
and one Cholesky factorisation, ``4 r^3 / 3``, per frequency; eigvalsh: the
tridiagonal reduction, ``16 r^3 / 3``; Gram iteration: ``8 r^3`` per step), and the
time they take at the measured bandwidth (a ``sum`` over a large array) and complex
matmul rate (a batched ``r = 640`` product). "Memory floor" below is the larger of the
two times.

Timings are medians of ``--repeats`` runs (the numpy loop and the baselines: one run).

Peak extra memory: the peak resident set size (``VmHWM`` reset through
``/proc/self/clear_refs``) minus the resident size before the call, Linux only; on CUDA
``torch.cuda.max_memory_allocated`` minus the allocation before.

Threads are fixed (``--threads``, default 2) and ``OMP_WAIT_POLICY=PASSIVE`` is set
before torch is imported.
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

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import architectures

from filterstats.spectra import conv_spectra

# ------------------------------------------------------------------------ timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kib() -> dict[str, int]:
    values = {}
    with Path("/proc/self/status").open() as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def measured(fn: Callable[[], Any], device: torch.device) -> tuple[float, float | None, Any]:
    """Run ``fn`` once: (seconds, peak extra bytes or None, result)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        return seconds, float(torch.cuda.max_memory_allocated(device) - before), result
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss_kib()["VmRSS"]
    except OSError:
        before = None
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = None if before is None else float(_rss_kib()["VmHWM"] - before) * 1024
    return seconds, peak, result


# ------------------------------------------------------------------ the layers


def conv_layers(model: nn.Module, size: int) -> list[tuple[str, Tensor, int, int]]:
    """``(name, weight, stride, input size)`` of every conv, from one forward pass."""
    sizes: dict[nn.Module, int] = {}

    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        sizes[module] = int(args[0].shape[-1])

    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    handles = [m.register_forward_pre_hook(hook) for _, m in convs]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for handle in handles:
        handle.remove()
    return [(n, m.weight.detach(), int(m.stride[0]), sizes[m]) for n, m in convs]


def polyphase_kernel(weight: np.ndarray, stride: int, n: int) -> np.ndarray:
    """Circular strided conv on ``n`` as a stride-1 one on ``n / s``: ``(co, ci s^2, P, P)``.

    Written here with plain loops, independently of filterstats.
    """
    c_out, c_in, k, _ = weight.shape
    grid = n // stride
    out = np.zeros((c_out, c_in, stride, stride, grid, grid), dtype=weight.dtype)
    for a in range(k):
        for b in range(k):
            out[:, :, a % stride, b % stride, (a // stride) % grid, (b // stride) % grid] += weight[
                :, :, a, b
            ]
    return out.reshape(c_out, c_in * stride * stride, grid, grid)


def numpy_loop(layers: list[tuple[str, Tensor, int, int]], sample: int) -> tuple[float, int]:
    """Seconds of the published loop (extrapolated from ``sample`` SVDs per layer)."""
    total = 0.0
    svds = 0
    for _, weight, stride, n in layers:
        kernel = polyphase_kernel(weight.double().numpy(), stride, n)
        grid = kernel.shape[-1]
        start = time.perf_counter()
        # Sedghi et al.: the FFT of the kernel (k, k, c_in, c_out) over the spatial axes.
        transforms = np.fft.fft2(np.transpose(kernel, (2, 3, 1, 0)), (grid, grid), axes=(0, 1))
        fft_seconds = time.perf_counter() - start
        picks = [(i % grid, (i * 7) % grid) for i in range(min(sample, grid * grid))]
        start = time.perf_counter()
        for u, v in picks:
            np.linalg.svd(transforms[u, v], compute_uv=False)
        per_svd = (time.perf_counter() - start) / len(picks)
        total += fft_seconds + per_svd * grid * grid
        svds += grid * grid
    return total, svds


def torch_svdvals(layers: list[tuple[str, Tensor, int, int]], device: torch.device) -> Tensor:
    """All singular values per layer: full-grid FFT and one batched svdvals each."""
    values = []
    for _, weight, stride, n in layers:
        kernel = torch.from_numpy(polyphase_kernel(weight.double().numpy(), stride, n)).to(device)
        transfer = torch.fft.fft2(kernel).permute(2, 3, 0, 1)
        values.append(torch.linalg.svdvals(transfer).reshape(-1))
    return torch.cat([v.sort(descending=True).values for v in values])


def power_iteration(
    layers: list[tuple[str, Tensor, int, int]], device: torch.device, iterations: int
) -> Tensor:
    """Naive batched complex power iteration on every layer's transfer matrices."""
    norms = []
    generator = torch.Generator(device=device).manual_seed(0)
    for _, weight, stride, n in layers:
        kernel = torch.from_numpy(polyphase_kernel(weight.double().numpy(), stride, n)).to(device)
        transfer = torch.fft.fft2(kernel).permute(2, 3, 0, 1).reshape(-1, *kernel.shape[:2])
        vector = torch.randn(transfer.shape[0], transfer.shape[2], 1, dtype=transfer.dtype,
                             device=device, generator=generator)  # fmt: skip
        for _ in range(iterations):
            vector = transfer.mH @ (transfer @ vector)
            vector = vector / torch.linalg.vector_norm(vector, dim=1, keepdim=True)
        norms.append(torch.linalg.vector_norm(transfer @ vector, dim=1).max())
    return torch.stack(norms)


def floors(layers: list[tuple[str, Tensor, int, int]], device: torch.device) -> dict[str, float]:
    """Bytes and flops each method cannot avoid, and the measured machine rates."""
    gram_bytes = certificate_flops = eig_flops = step_bytes = step_flops = 0.0
    for _, weight, stride, n in layers:
        c_out, c_in, k, _ = weight.shape
        grid = n // stride
        frequencies = grid * (grid // 2 + 1)
        p, q = c_out, c_in * stride * stride
        r, inner = min(p, q), max(p, q)
        taps = (-(-k // stride)) ** 2
        gram_bytes += frequencies * 16 * r * r * 2
        certificate_flops += (taps * taps + taps) * inner * r * r + frequencies * 4 * r**3 / 3
        eig_flops += frequencies * 16 * r**3 / 3
        step_bytes += frequencies * 16 * (p * q + 2 * r * r)
        step_flops += frequencies * 8 * r**3
    big = torch.randn(2**26, dtype=torch.float64, device=device)
    big.sum()
    _sync(device)
    start = time.perf_counter()
    for _ in range(3):
        big.sum()
    _sync(device)
    bandwidth = 3 * big.numel() * 8 / (time.perf_counter() - start)
    matrices = torch.randn(8, 640, 640, dtype=torch.complex128, device=device)
    matrices @ matrices
    _sync(device)
    start = time.perf_counter()
    matrices @ matrices
    _sync(device)
    rate = 8 * 8 * 640**3 / (time.perf_counter() - start)
    return {
        "gram_bytes": gram_bytes,
        "certificate_flops": certificate_flops,
        "eig_flops": eig_flops,
        "step_bytes": step_bytes,
        "step_flops": step_flops,
        "bandwidth": bandwidth,
        "rate": rate,
    }


def _floor(bytes_: float, flops: float, floor: dict[str, float]) -> str:
    seconds = max(bytes_ / floor["bandwidth"], flops / floor["rate"])
    return f"{bytes_ / 2**30:.1f} GiB, {flops / 1e9:.0f} GFLOP: {seconds:.1f} s"


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="WRN-16-2, fewer baselines")
    parser.add_argument("--model", default=None, help="a name in architectures.MODELS")
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--numpy-frequencies", type=int, default=6, help="SVDs timed per layer (numpy loop)"
    )
    parser.add_argument("--power-iterations", type=int, default=30, help="0 skips it")
    parser.add_argument("--gram", action="store_true", help="also time norm_method='gram'")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the fast methods")
    parser.add_argument("--float32", action="store_true", help="also time float32 spectra")
    parser.add_argument("--skip-torch-svdvals", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = args.model or ("WRN-16-2" if args.quick else "WRN-28-10")
    model = architectures.build(name)
    layers = conv_layers(model, args.size)
    input_size = (3, args.size, args.size)

    print(f"# conv_spectra benchmark: {name} at {args.size}x{args.size}, {len(layers)} convs\n")
    print(f"- device: {device} ({platform.processor() or platform.machine()}), torch "
          f"{torch.__version__}, numpy {np.__version__}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f} at start")  # fmt: skip

    def spectra(**kwargs: Any) -> Any:
        return conv_spectra(model, input_size=input_size, device=device, progress=False, **kwargs)

    floor = floors(layers, device)
    print(f"- measured: {floor['bandwidth'] / 1e9:.1f} GB/s (float64 sum), "
          f"{floor['rate'] / 1e9:.1f} GFLOP/s (complex128 matmul, r = 640)")  # fmt: skip

    def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float | None, Any]:
        times, peak, result = [], None, None
        for repeat in range(repeats):
            seconds, peak_now, result = measured(fn, device)
            times.append(seconds)
            peak = peak_now if repeat == 0 else peak
        return statistics.median(times), peak, result

    # -------------------------------------------------------------- singular values
    rows: list[list[str]] = []
    numpy_seconds, numpy_svds = numpy_loop(layers, args.numpy_frequencies)
    rows.append(["numpy loop (published)", f"{numpy_seconds:.1f}", "1.0",
                 f"extrapolated from {args.numpy_frequencies} of each layer's frequencies "
                 f"({numpy_svds:,} SVDs in all)", "n/a", "n/a"])  # fmt: skip
    exact_seconds, exact_peak, exact = timed(
        lambda: spectra(padding="circular", singular_values=True), args.repeats
    )
    ours = torch.cat([exact.singular_values(r.layer) for r in exact.computed])
    if not args.skip_torch_svdvals:
        svd_seconds, svd_peak, reference = measured(lambda: torch_svdvals(layers, device), device)
        agree = float(
            (ours.sort(descending=True).values - reference.cpu().sort(descending=True).values)
            .abs()
            .max()
            / reference.abs().max()
        )
        rows.append(["torch svdvals, full grid", f"{svd_seconds:.1f}",
                     f"{numpy_seconds / svd_seconds:.1f}", "complex128, one batch per layer",
                     _gib(svd_peak), "n/a"])  # fmt: skip
    else:
        agree = math.nan
    rows.append(["filterstats, float64 (Gram eigvalsh)", f"{exact_seconds:.1f}",
                 f"{numpy_seconds / exact_seconds:.1f}",
                 f"half spectrum, batched; max diff vs torch svdvals {agree:.1e} (of sigma_1)",
                 _gib(exact_peak),
                 _floor(floor["gram_bytes"], floor["eig_flops"], floor)])  # fmt: skip
    if args.float32:
        f32_seconds, f32_peak, fast = timed(
            lambda: spectra(padding="circular", singular_values=True, dtype=torch.float32),
            args.repeats,
        )
        theirs = torch.cat([fast.singular_values(r.layer) for r in fast.computed])
        gap = float((theirs.sort(descending=True).values - ours.sort(descending=True).values)
                    .abs().max() / ours.abs().max())  # fmt: skip
        speed = f"{numpy_seconds / f32_seconds:.1f}"
        rows.append(["filterstats, float32 (svdvals)", f"{f32_seconds:.1f}", speed,
                     f"complex64; max diff vs float64 {gap:.1e} (of sigma_1)",
                     _gib(f32_peak), "n/a"])  # fmt: skip
    print("\n## All singular values (circular padding assumed)\n")
    print("| method | seconds (median) | speed-up vs numpy | notes | peak extra memory | floor |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")

    # -------------------------------------------------------------- spectral norms
    exact_norms = torch.tensor([r.spectral_norm for r in exact.computed], dtype=torch.float64)
    rows = []
    if args.power_iterations:
        power_seconds, power_peak, power = measured(
            lambda: power_iteration(layers, device, args.power_iterations), device
        )
        error = float(((power.cpu() - exact_norms) / exact_norms).abs().max())
        rows.append([f"power iteration ({args.power_iterations} steps, naive)",
                     f"{power_seconds:.1f}", f"max rel. error {error:.1e} (no guarantee)",
                     _gib(power_peak), "n/a"])  # fmt: skip
    runs = [("certificate", "circular"), ("certificate", "model")]
    if args.gram:
        runs.append(("gram", "circular"))
    seconds_of: dict[tuple[str, str], float] = {}
    for method, padding in runs:
        seconds, peak, result = timed(
            lambda method=method, padding=padding: spectra(padding=padding, norm_method=method),
            args.repeats if method == "certificate" else 1,
        )
        seconds_of[method, padding] = seconds
        norms = torch.tensor([r.spectral_norm for r in result.computed], dtype=torch.float64)
        if padding == "circular":
            gap = float(((norms - exact_norms) / exact_norms).max())
            low = float(((norms - exact_norms) / exact_norms).min())
            note = f"certified: {low:.1e} <= (bound - exact) / exact <= {gap:.1e}"
        else:
            lower = torch.tensor([r.spectral_norm_lower for r in result.computed])
            note = (f"zero padding: bounds, median bound / certified lower "
                    f"{float((norms / lower).median()):.3f}")  # fmt: skip
        if method == "certificate":
            cost = _floor(floor["gram_bytes"], floor["certificate_flops"], floor)
        else:
            cost = _floor(floor["step_bytes"], floor["step_flops"], floor) + " per step"
        rows.append([f"filterstats {method}, padding={padding}", f"{seconds:.1f}", note,
                     _gib(peak), cost])  # fmt: skip
    print("\n## Spectral norms of every layer\n")
    print("| method | seconds (median) | accuracy | peak extra memory | floor |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.gram:
        ratio = seconds_of["gram", "circular"] / seconds_of["certificate", "circular"]
        print(f"\nCertificate vs Gram iteration (circular, same process): {ratio:.1f}x faster.")


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # rows appear as measured, even in a file
    main()
