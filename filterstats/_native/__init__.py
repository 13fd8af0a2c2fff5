"""The compiled fused kernel pass: built on first use, cached, optional.

[`filterstats.kernels.kernel_pass`][] reads every kernel once to count the sparse ones
and to sum the float64 moments of each entropy variant. In torch that is a dozen
element-wise passes and thin matrix products per chunk; here it is one C loop
(``kernel_pass.c``) that keeps each kernel in registers, several times faster on CPU.
For the sparsity alone ([`filterstats.kernels.layer_sparsity`][]) the same code reads
the kernels once, writing each kernel's maximum, where torch reads them twice (the
layer's maximum first, for the threshold).

The source ships with the package and is compiled on first use with the system's C
compiler (``$CC``, else ``cc``; ``-O3 -march=native -ffp-contract=off``, about a
second), into a per-user cache directory (``$FILTERSTATS_CACHE_DIR``, else
``$XDG_CACHE_HOME/filterstats``, else ``~/.cache/filterstats``), keyed by the source,
the flags and the CPU, so a home directory shared by different machines holds one
build per CPU kind. Nothing is downloaded. Whenever this is not possible (no compiler,
Windows, a non-CPU tensor, half precision, kernels wider than 64 values) or when
``FILTERSTATS_NATIVE=0`` is set, the torch path computes the same values. Both paths
compute every per-kernel value with the same IEEE operations; only the order of the
float64 sums differs (the tests hold them to 1e-12).

Blocks of kernels are shared among ``torch.get_num_threads()`` threads (the call
releases the GIL); the sums do not depend on the number of threads.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from concurrent.futures import Executor

__all__ = [
    "ENV_CACHE_DIR",
    "ENV_SWITCH",
    "NativePass",
    "NativeSparsity",
    "available",
    "kernel_pass",
    "sparsity",
]

logger = logging.getLogger(__name__)

#: Set to ``0`` to always use the torch path.
ENV_SWITCH = "FILTERSTATS_NATIVE"
#: Where compiled kernels are cached (default ``~/.cache/filterstats``).
ENV_CACHE_DIR = "FILTERSTATS_CACHE_DIR"

_SOURCE = Path(__file__).with_name("kernel_pass.c")
_MAX_WIDTH = 64
_MAX_VARIANTS = 4
_FLAGS = ("-O3", "-ffp-contract=off", "-fPIC", "-shared", "-std=c11")


class _PassArgs(ctypes.Structure):
    _fields_ = [
        ("n", ctypes.c_int64),
        ("width", ctypes.c_int64),
        ("n_variants", ctypes.c_int64),
        ("strict", ctypes.c_int32),
        ("omit", ctypes.c_int32),
        ("threshold", ctypes.c_void_p),
        ("all_sparse", ctypes.c_void_p),
        ("scale", ctypes.c_int32 * _MAX_VARIANTS),
        ("drop", ctypes.c_int32 * _MAX_VARIANTS),
        ("shift", ctypes.c_void_p),
    ]


_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_tried = False
_pool: tuple[int, int, Executor] | None = None  # (pid, workers, pool)


def _cpu_key() -> str:
    """What the compiled code depends on besides the source and flags: the CPU kind."""
    parts = [sys.platform, platform.machine()]
    try:
        with Path("/proc/cpuinfo").open() as info:
            for line in info:
                if line.startswith(("flags", "model name", "Features", "CPU part")):
                    parts.append(line.strip())
                    if len(parts) > 6:
                        break
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def _cache_dir() -> tuple[Path, bool]:
    """A directory only this user can write to, and whether it is a fresh temporary one."""
    import tempfile

    configured = os.environ.get(ENV_CACHE_DIR)
    if configured:
        base = Path(configured)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "filterstats"
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = base.stat()
        owned = not hasattr(os, "getuid") or info.st_uid == os.getuid()
        if owned and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return base, False
        logger.debug("%s is writable by others; compiling into a private directory", base)
    except OSError as error:
        logger.debug("cache directory %s unusable (%s)", base, error)
    return Path(tempfile.mkdtemp(prefix="filterstats-")), True


def _compile(target: Path) -> None:
    import shlex
    import subprocess

    compiler = shlex.split(os.environ.get("CC") or "cc")  # e.g. "ccache gcc"
    # Unique per host and process: cluster nodes may share the cache directory.
    temporary = target.with_name(f".{target.name}.{platform.node()}.{os.getpid()}.tmp")
    errors = []
    # -march=native where the compiler knows it; plain -O3 otherwise.
    for extra in (("-march=native",), ()):
        command = [*compiler, *_FLAGS, *extra, "-o", str(temporary), str(_SOURCE), "-lm"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as error:
            raise RuntimeError(f"{shlex.join(compiler)}: {error}") from error
        if done.returncode == 0:
            temporary.replace(target)  # atomic: concurrent processes never see half
            return
        errors.append(done.stderr.strip())
    temporary.unlink(missing_ok=True)
    raise RuntimeError(f"{shlex.join(compiler)} failed: {errors[-1][:500]}")


def _build_name() -> str:
    """The cached build's file name: a key of the source, the flags and the CPU."""
    import hashlib

    source = _SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join([source, " ".join(_FLAGS).encode(), _cpu_key().encode()])
    ).hexdigest()[:20]
    return f"kernel_pass-{key}.so"


def _load() -> ctypes.CDLL:
    directory, temporary = _cache_dir()
    target = directory / _build_name()
    try:
        if not target.exists():
            _compile(target)
        try:
            library = ctypes.CDLL(str(target))
        except OSError:  # a damaged cached build: build it again, once
            _compile(target)
            library = ctypes.CDLL(str(target))
    finally:
        if temporary:  # a loaded library needs no file; leave nothing behind
            import shutil

            shutil.rmtree(directory, ignore_errors=True)
    i64, i32, pointer = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
    for name in ("fs_maxima_f32", "fs_maxima_f64"):
        function = getattr(library, name)
        function.restype = ctypes.c_int
        function.argtypes = [pointer, i64, i64, i64, i64, i32, pointer, pointer, pointer]
    for name in ("fs_count_sparse_f32", "fs_count_sparse_f64"):
        function = getattr(library, name)
        function.restype = ctypes.c_int
        function.argtypes = [pointer, i64, i64, i64, ctypes.c_double, i32, i32, i32]
        function.argtypes += [pointer, pointer]
    for name in ("fs_pass_f32", "fs_pass_f64"):
        function = getattr(library, name)
        function.restype = ctypes.c_int
        function.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(_PassArgs),
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
    library.fs_fenv_get.restype = None
    library.fs_fenv_get.argtypes = [ctypes.c_void_p]
    library.fs_reduce.restype = None
    library.fs_reduce.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    for name in ("fs_block_size", "fs_stride", "fs_work_size", "fs_fenv_size"):
        getattr(library, name).restype = ctypes.c_int64
    library.fs_stride.argtypes = [ctypes.c_int64, ctypes.c_int64]
    library.fs_work_size.argtypes = [ctypes.c_int64, ctypes.c_int64]
    return library


def _get_library() -> ctypes.CDLL | None:
    global _library, _tried
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if _tried:
        return _library
    with _lock:
        if not _tried:
            if sys.platform == "win32":
                logger.debug("compiled kernel pass not built on Windows; using torch")
            else:
                try:
                    _library = _load()
                except Exception as error:  # any failure: the torch path is exact too
                    logger.info("compiled kernel pass unavailable (%s); using torch", error)
            _tried = True
    return _library


def available() -> bool:
    """Whether the compiled kernel pass can be used (compiling it now if needed).

    Returns:
        True when it is built and loaded and ``FILTERSTATS_NATIVE`` is not ``0``.
    """
    return _get_library() is not None


def _executor(workers: int) -> Executor:
    """A pool of at least ``workers`` threads (a new one after a fork)."""
    from concurrent.futures import ThreadPoolExecutor

    global _pool
    with _lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] < workers:
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)
            _pool = (os.getpid(), workers, ThreadPoolExecutor(workers, "filterstats"))
        return _pool[2]


@dataclass(frozen=True)
class NativePass:
    """Results of one compiled pass (float64 tensors on the CPU).

    Attributes:
        n_sparse: ``()`` number of sparse kernels.
        n_valid: ``()`` number of kernels used.
        moments: Per variant ``(count (), total (K,), outer (K, K))``.
        shifts: Per variant ``(K,)``, subtracted from each counted kernel before
            ``total`` and ``outer`` were summed.
    """

    n_sparse: Tensor
    n_valid: Tensor
    moments: list[tuple[Tensor, Tensor, Tensor]]
    shifts: list[Tensor]


#: Layers of fewer blocks than this run on the calling thread alone: handing work to
#: another thread costs more than it saves for them.
_MIN_PARALLEL_BLOCKS = 16


def _in_threads(
    library: ctypes.CDLL,
    n_blocks: int,
    run: Callable[[int, int, int, ctypes.Array[ctypes.c_char]], int],
) -> None:
    """``run(worker, first_block, last_block, caller_fenv)`` over shares of the blocks.

    Shares go to ``torch.get_num_threads()`` threads (the calling thread takes the first
    itself); every thread computes in the caller's floating-point environment (e.g.
    flush to zero after ``torch.set_flush_denormal(True)``).
    """
    workers = min(torch.get_num_threads(), n_blocks // _MIN_PARALLEL_BLOCKS) or 1
    bounds = [n_blocks * w // workers for w in range(workers + 1)]
    caller_fenv = ctypes.create_string_buffer(library.fs_fenv_size())
    library.fs_fenv_get(caller_fenv)

    def share(w: int) -> int:
        return run(w, bounds[w], bounds[w + 1], caller_fenv)

    pool = _executor(workers - 1) if workers > 1 else None
    others = [pool.submit(share, w) for w in range(1, workers)] if pool else []
    codes = [share(0)] + [future.result() for future in others]
    if any(codes):
        raise RuntimeError(f"compiled kernel pass refused its arguments (codes {codes})")


def _sums(library: ctypes.CDLL, kernels: Tensor, args: _PassArgs, n_variants: int) -> Tensor:
    """One compiled pass over ``args.n`` kernels: the ``(stride,)`` float64 sums."""
    n_rows, width = args.n, args.width
    block = library.fs_block_size()
    n_blocks = -(-n_rows // block)
    stride = library.fs_stride(width, n_variants)
    work_size = library.fs_work_size(width, n_variants)
    partials = torch.empty(n_blocks, stride, dtype=torch.float64)
    function = library.fs_pass_f32 if kernels.dtype == torch.float32 else library.fs_pass_f64
    works: dict[int, Tensor] = {}

    def run(w: int, first: int, last: int, caller_fenv: ctypes.Array[ctypes.c_char]) -> int:
        work = works.setdefault(w, torch.empty(work_size, dtype=torch.float64))
        return int(
            function(
                kernels.data_ptr(),
                ctypes.byref(args),
                first,
                last,
                work.data_ptr(),
                partials.data_ptr(),
                caller_fenv,
            )
        )

    _in_threads(library, n_blocks, run)
    out = torch.empty(stride, dtype=torch.float64)
    library.fs_reduce(partials.data_ptr(), n_blocks, stride, out.data_ptr())
    return out


def _applies(kernels: Tensor) -> bool:
    """Whether the compiled code takes these ``(N, K)`` kernels (else the torch path)."""
    n_rows, width = kernels.shape
    return (
        kernels.device.type == "cpu"
        and kernels.dtype in (torch.float32, torch.float64)
        and 0 < width <= _MAX_WIDTH
        and n_rows > 0
        and kernels.is_contiguous()  # a copy would break the memory bound
    )


@dataclass(frozen=True)
class NativeSparsity:
    """A layer's maximum and sparsity count from one compiled read (host numbers).

    Attributes:
        top: Largest |value| (over the finite kernels when they are omitted, 0 if
            none; NaN when a NaN propagates).
        finite: Every value is finite.
        n_valid: Kernels used (the finite ones when omitted).
        n_sparse: Sparse kernels among them.
    """

    top: float
    finite: bool
    n_valid: float
    n_sparse: float


def sparsity(
    kernels: Tensor, eps: float, *, strict: bool, omit_nonfinite: bool
) -> NativeSparsity | None:
    """The sparsity count of one layer in compiled code, or ``None`` where it does not apply.

    One read of the kernels writes each kernel's max|value| (a ninth of a 3x3 layer)
    and each block's largest; the threshold ``eps * max`` is then applied to the
    maxima alone, with the comparisons of the fused pass (float64, ``<=`` or ``<``).

    Args:
        kernels: ``(N, K)`` kernels as rows.
        eps: Threshold as a fraction of the layer's largest |value|.
        strict: Sparse means ``<`` instead of ``<=``.
        omit_nonfinite: Leave out kernels holding NaN/inf.

    Returns:
        A [`NativeSparsity`][filterstats._native.NativeSparsity], or ``None``.
    """
    if not _applies(kernels):
        return None
    library = _get_library()
    if library is None:
        return None
    n_rows, width = kernels.shape
    single = kernels.dtype == torch.float32
    maxima = torch.empty(n_rows, dtype=kernels.dtype)
    n_blocks = -(-n_rows // library.fs_block_size())
    blocks = torch.empty(n_blocks, 3, dtype=torch.float64)
    sparse = torch.empty(n_blocks, dtype=torch.float64)
    find = library.fs_maxima_f32 if single else library.fs_maxima_f64
    count = library.fs_count_sparse_f32 if single else library.fs_count_sparse_f64
    omit = int(omit_nonfinite)

    def find_maxima(w: int, first: int, last: int, caller_fenv: ctypes.Array[ctypes.c_char]) -> int:
        return int(
            find(
                kernels.data_ptr(),
                n_rows,
                width,
                first,
                last,
                omit,
                maxima.data_ptr(),
                blocks.data_ptr(),
                caller_fenv,
            )
        )

    _in_threads(library, n_blocks, find_maxima)
    top = float(blocks[:, 0].amax())  # NaN propagates through amax
    finite = bool(blocks[:, 1].amin())
    used = float(blocks[:, 2].sum())
    all_sparse = not top > 0  # an all-zero layer: every kernel is sparse

    def count_sparse(
        w: int, first: int, last: int, caller_fenv: ctypes.Array[ctypes.c_char]
    ) -> int:
        return int(
            count(
                maxima.data_ptr(),
                n_rows,
                first,
                last,
                eps * top,
                int(strict),
                int(all_sparse),
                omit,
                sparse.data_ptr(),
                caller_fenv,
            )
        )

    _in_threads(library, n_blocks, count_sparse)
    return NativeSparsity(top=top, finite=finite, n_valid=used, n_sparse=float(sparse.sum()))


@functools.cache
def _upper_indices(width: int) -> Tensor:
    return torch.triu_indices(width, width)


def kernel_pass(
    kernels: Tensor,
    threshold: Tensor,
    *,
    strict: bool,
    all_sparse: Tensor,
    variants: Sequence[tuple[bool, bool]],
    shift_rows: int,
    omit_nonfinite: bool,
) -> NativePass | None:
    """The fused pass in compiled code, or ``None`` where it does not apply.

    Each variant's moments are summed after subtracting its shift: the mean of its
    counted rows among the first ``shift_rows`` kernels (0 if none, or if not finite),
    as in the torch path; a first compiled pass over those kernels gives it.

    Args:
        kernels: ``(N, K)`` kernels as rows.
        threshold: ``()`` float64 sparsity threshold.
        strict: Sparse means ``<`` instead of ``<=``.
        all_sparse: ``()`` bool, every kernel sparse.
        variants: ``(scale, drop_sparse)`` per moment set.
        shift_rows: Kernels whose mean is the shift.
        omit_nonfinite: Leave out kernels holding NaN/inf.

    Returns:
        A [`NativePass`][filterstats._native.NativePass] (shifts in ``shifts``), or
        ``None`` when the tensor's device, dtype or width, or the platform, does not
        allow the compiled pass.
    """
    n_rows, width = kernels.shape
    if not _applies(kernels) or len(variants) > _MAX_VARIANTS:
        return None
    library = _get_library()
    if library is None:
        return None
    f64 = torch.float64
    n_variants = len(variants)
    threshold = threshold.to(f64).contiguous()
    all_sparse = all_sparse.to(torch.uint8).contiguous()
    shift = torch.zeros(max(n_variants, 1), width, dtype=f64)
    args = _PassArgs(
        n=n_rows,
        width=width,
        n_variants=n_variants,
        strict=int(strict),
        omit=int(omit_nonfinite),
        threshold=threshold.data_ptr(),
        all_sparse=all_sparse.data_ptr(),
        shift=shift.data_ptr(),
    )
    for v, (scale, drop) in enumerate(variants):
        args.scale[v] = int(scale)
        args.drop[v] = int(drop)
    per_variant = 1 + width + width * (width + 1) // 2
    if n_variants:
        # The shifts: the same sums, unshifted, over the first shift_rows kernels.
        args.n = min(shift_rows, n_rows)
        first = _sums(library, kernels, args, n_variants)
        for v in range(n_variants):
            offset = 2 + v * per_variant
            count = first[offset].clamp_min(1.0)
            shift[v] = torch.nan_to_num(first[offset + 1 : offset + 1 + width] / count, 0, 0, 0)
        args.n = n_rows
    out = _sums(library, kernels, args, n_variants)
    upper = _upper_indices(width)
    moments = []
    for v in range(n_variants):
        offset = 2 + v * per_variant
        packed = out[offset + 1 + width : offset + per_variant]
        outer = torch.empty(width, width, dtype=f64)
        outer[upper[0], upper[1]] = packed
        outer[upper[1], upper[0]] = packed
        moments.append((out[offset].clone(), out[offset + 1 : offset + 1 + width].clone(), outer))
    return NativePass(out[0].clone(), out[1].clone(), moments, list(shift[:n_variants]))
