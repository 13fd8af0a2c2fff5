"""Batched, memory-bounded maths on convolution weights.

These are the building blocks of [`filterstats.metrics`][]: each works on the kernels
of one layer, or on a batch of per-layer statistics, on the weights' own device, with
no host synchronisation. Public metric functions validate their inputs; these do not.

Memory: every pass over a layer works in row chunks of at most ``chunk_bytes`` bytes
of working storage, so the extra memory for any layer is bounded by a constant
independent of the layer's size. [`kernel_pass`][filterstats.kernels.kernel_pass] keeps
no per-kernel state at all; [`kernel_maxabs`][filterstats.kernels.kernel_maxabs]
returns one value per kernel in the weights' compute dtype.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from filterstats import _native

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "KernelPass",
    "LayerSparsity",
    "Moments",
    "dct_basis",
    "entropy_threshold",
    "finite_rows",
    "frequency_bands",
    "frequency_energy",
    "kernel_maxabs",
    "kernel_moments",
    "kernel_pass",
    "layer_maxabs",
    "layer_sparsity",
    "native_pass_available",
    "offdiag_abs_gram_sum",
    "offdiag_abs_gram_sum_batched",
    "pair_count",
    "variance_entropy",
]

#: Working memory of one chunk (bytes). 64 MiB keeps peak memory small while the
#: matrix products stay large enough to run at full speed.
DEFAULT_CHUNK_BYTES = 64 * 2**20

#: Chunk size of the memory-bound passes (kernel maxima, moments): large enough that
#: the per-chunk overhead vanishes, small enough to stay far below the weights' size
#: (measured on 2 cores: the fused pass runs as fast with 1 MiB as with 16 MiB).
_CACHE_CHUNK_BYTES = 4 * 2**20

#: Rows per panel of the upper-triangle Gram product: the work is half a Gram times
#: ``1 + _GRAM_BLOCK_ROWS / n``.
_GRAM_BLOCK_ROWS = 128

#: Kernels per block of the moment products of
#: [`kernel_pass`][filterstats.kernels.kernel_pass]: blocks start at fixed rows of the
#: layer, so the result does not depend on ``chunk_bytes``; one batched product per
#: chunk (thin products over blocks this long run faster than one long product).
_MOMENT_BLOCK_ROWS = 1024

#: Kernels whose mean is the shift of [`kernel_pass`][filterstats.kernels.kernel_pass]'s
#: moments (the first ``_SHIFT_ROWS`` of the layer, whatever ``chunk_bytes``).
_SHIFT_ROWS = 256

#: Eigenvalues of a layer's kernel covariance below this fraction of the kernels'
#: summed squared norm are treated as zero. Without it, a layer of identical kernels
#: (zero variance) shows a false entropy from float rounding; true eigenvalues this
#: small change the entropy by less than 1e-8.
EIGENVALUE_FLOOR = 1e-10


def native_pass_available() -> bool:
    """Whether the compiled fused kernel pass runs on CPU tensors here.

    [`kernel_pass`][filterstats.kernels.kernel_pass] uses a small C loop, compiled on
    first use with the system's C compiler and cached per user (see the Performance
    page); without a compiler, on Windows, or with ``FILTERSTATS_NATIVE=0``, the torch
    path computes the same values, several times slower. Calling this compiles the
    loop if it is not cached yet (about a second).

    Returns:
        True when the compiled pass is built, loaded and switched on.
    """
    return _native.available()


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Floating dtype to compute in: float64 stays, everything else becomes float32.

    Args:
        dtype: The weights' dtype.

    Returns:
        ``torch.float64`` for float64 input, else ``torch.float32``.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows_per_chunk(n_rows: int, row_bytes: int, chunk_bytes: int) -> int:
    return max(1, min(n_rows, chunk_bytes // max(row_bytes, 1)))


def kernel_maxabs(kernels: Tensor, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tensor:
    """Largest absolute value of each kernel.

    Args:
        kernels: ``(N, K)`` kernels as rows (any floating dtype).
        chunk_bytes: Working memory per chunk; bounds peak memory.

    Returns:
        ``(N,)`` in ``_compute_dtype(kernels.dtype)`` (exact: a maximum rounds nothing).
        NaN where a kernel holds NaN.
    """
    n_rows, width = kernels.shape
    dtype = _compute_dtype(kernels.dtype)
    result = torch.empty(n_rows, dtype=dtype, device=kernels.device)
    if n_rows == 0:
        return result
    itemsize = torch.finfo(dtype).bits // 8
    step = _rows_per_chunk(n_rows, width * itemsize, min(chunk_bytes, _CACHE_CHUNK_BYTES))
    buffer = torch.empty(step * width, dtype=dtype, device=kernels.device)
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        # |x| into a cache-sized buffer, then a strided max-pool: a reduction over
        # rows of K = 9 values is several times slower than this in torch.
        chunk = buffer[: (stop - start) * width].view(stop - start, width)
        if kernels.dtype == dtype:
            torch.abs(kernels[start:stop], out=chunk)
        else:  # half/bfloat16: upcast exactly, then |x|
            chunk.copy_(kernels[start:stop]).abs_()
        # max_pool1d propagates NaN, as the definition needs.
        pooled = F.max_pool1d(chunk.view(1, 1, -1), width, width)
        result[start:stop] = pooled.view(-1)
    return result


@dataclass(frozen=True)
class Moments:
    """Weighted count, sum and outer-product sum of one layer's kernels (float64).

    Attributes:
        count: ``()`` summed row weights.
        total: ``(K,)`` weighted sum of the (scaled) kernels, minus ``shift`` each.
        outer: ``(K, K)`` weighted sum of their outer products, after subtracting
            ``shift`` from every kernel.
        shift: ``(K,)`` constant subtracted from every counted kernel (float64), or
            ``None`` for none. A shift near the mean avoids cancellation in the scatter
            matrix, which it does not change.
    """

    count: Tensor
    total: Tensor
    outer: Tensor
    shift: Tensor | None = None


def kernel_moments(
    kernels: Tensor,
    *,
    weights: Tensor | None = None,
    scale: Tensor | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Weighted count, sum and outer-product sum of a layer's kernels, in float64.

    With rows :math:`x_i` (divided by ``scale[i]`` when given) and weights
    :math:`w_i` (1 when not given): :math:`n = \sum w_i`, :math:`s = \sum w_i x_i`,
    :math:`Q = \sum w_i x_i x_i^\top`. The centred scatter matrix is
    :math:`Q - s s^\top / n`. One variant of ``_kernel_moments_multi``, which see.

    Args:
        kernels: ``(N, K)`` kernels as rows.
        weights: ``(N,)`` 0/1 row weights (a mask), or ``None``.
        scale: ``(N,)`` positive divisors per row, or ``None``.
        chunk_bytes: Working memory per chunk; bounds peak memory.

    Returns:
        ``(count (), sum (K,), outer (K, K))``, float64, on ``kernels.device``.
    """
    (moments,) = _kernel_moments_multi(kernels, [(weights, scale)], chunk_bytes=chunk_bytes)
    return moments.count, moments.total, moments.outer


def _kernel_moments_multi(
    kernels: Tensor,
    variants: Sequence[tuple[Tensor | None, Tensor | None]],
    *,
    valid: Tensor | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> list[Moments]:
    r"""Moments of several weightings of a layer's kernels in one pass over memory.

    Each variant is ``(weights, scale)``: rows :math:`x_i / \text{scale}_i` with 0/1
    weights :math:`w_i`; ``None`` means all ones. Rows where a weight is 0 are left out
    even if they hold NaN (their row is zeroed first when ``valid`` says so).

    The kernels are read once, in cache-sized chunks, converted to float64 in a
    transposed ``(K, rows)`` buffer, and every variant's :math:`Q` is one small matrix
    product per chunk.

    Args:
        kernels: ``(N, K)`` kernels as rows.
        variants: ``(weights (N,) or None, scale (N,) or None)`` per variant.
        valid: ``(N,)`` bool, rows that may be used at all (finite), or ``None``; rows
            where False must have weight 0 in every variant.
        chunk_bytes: Working memory per chunk; bounds peak memory.

    Returns:
        One [`Moments`][] per variant, float64, on ``kernels.device``.
    """
    n_rows, width = kernels.shape
    device = kernels.device
    f64 = torch.float64
    totals = [torch.zeros(width, dtype=f64, device=device) for _ in variants]
    outers = [torch.zeros(width, width, dtype=f64, device=device) for _ in variants]
    # Row multipliers w / scale, made per chunk (no per-layer float64 array).
    factors: list[tuple[Tensor | None, Tensor | None] | None] = [
        None if weights is None and scale is None else (weights, scale)
        for weights, scale in variants
    ]
    scaled_variants = sum(factor is not None for factor in factors)
    # float64 accumulation: a float32 k*k Gram is off by ~1e-8 relative even in small
    # chunks, which moves the entropy of nearly-degenerate layers far more.
    step = _rows_per_chunk(
        n_rows, width * 8 * (1 + min(scaled_variants, 1)), min(chunk_bytes, _CACHE_CHUNK_BYTES)
    )
    columns = torch.empty(width, min(step, n_rows), dtype=f64, device=device)
    scaled = torch.empty_like(columns) if scaled_variants else columns
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        # Transposed layout (K, rows): the products below then run over long
        # contiguous rows, several times faster than over (rows, K).
        block = columns[:, : stop - start]
        block.copy_(kernels[start:stop].T)
        if valid is not None:
            block.masked_fill_(~valid[start:stop], 0.0)
        for factor, total, outer in zip(factors, totals, outers):
            if factor is None:
                rows = block
            else:
                weights, scale = factor
                multiplier = block.new_ones(stop - start)
                if scale is not None:
                    multiplier = multiplier / scale[start:stop]
                if weights is not None:
                    multiplier = torch.where(weights[start:stop] > 0, multiplier, 0.0)
                rows = torch.mul(block, multiplier, out=scaled[:, : stop - start])
            total += rows.sum(dim=1)
            outer.addmm_(rows, rows.T)
    results = []
    for (weights, _), total, outer in zip(variants, totals, outers):
        if weights is None:
            count = (
                valid.sum().to(f64)
                if valid is not None
                else torch.tensor(float(n_rows), dtype=f64, device=device)
            )
        else:
            count = (weights > 0).sum().to(f64)
        results.append(Moments(count=count, total=total, outer=outer))
    return results


def variance_entropy(
    count: Tensor, total: Tensor, outer: Tensor, shift: Tensor | None = None
) -> Tensor:
    r"""Shannon entropy (base 10) of the explained-variance ratios, batched over layers.

    :math:`C = Q - s s^\top / n` is the kernels' scatter matrix; its eigenvalues
    :math:`\lambda_j` are the squared singular values of the centred kernels, and
    :math:`H = -\sum_j p_j \log_{10} p_j` with :math:`p_j = \lambda_j / \sum \lambda`.

    Args:
        count: ``(L,)`` number of kernels per layer (weighted).
        total: ``(L, K)`` kernel sums.
        outer: ``(L, K, K)`` outer-product sums.
        shift: ``(L, K)`` constant subtracted from every kernel before ``total`` and
            ``outer`` were summed (see [`Moments`][filterstats.kernels.Moments]), or
            ``None``. The scatter matrix does not depend on it; the eigenvalue floor
            is taken relative to the unshifted second moment.

    Returns:
        ``(L,)`` float64 entropies in ``[0, log10(K)]``: 0 where the kernels have no
        variance, NaN where fewer than two kernels were counted.
    """
    safe_count = count.clamp_min(1.0)
    scatter = outer - total[:, :, None] * total[:, None, :] / safe_count[:, None, None]
    scatter = 0.5 * (scatter + scatter.transpose(1, 2))
    # eigh fails on NaN/inf: solve a zero matrix there and report NaN below.
    finite = torch.isfinite(scatter).all(dim=2).all(dim=1)
    eigenvalues = torch.linalg.eigvalsh(torch.where(finite[:, None, None], scatter, 0.0))
    second = torch.diagonal(outer, dim1=1, dim2=2).sum(dim=1)
    if shift is not None:
        # trace of sum (x)(x)^T from that of sum (x - c)(x - c)^T: + 2 s.c + n |c|^2.
        second = second + 2.0 * (total * shift).sum(dim=1) + count * (shift * shift).sum(dim=1)
    floor = EIGENVALUE_FLOOR * second
    eigenvalues = torch.where(eigenvalues > floor[:, None], eigenvalues, 0.0)
    variance = eigenvalues.sum(dim=1, keepdim=True)
    ratio = eigenvalues / torch.where(variance > 0, variance, 1.0)
    terms = torch.where(ratio > 0, ratio * torch.log10(torch.where(ratio > 0, ratio, 1.0)), 0.0)
    entropy = 0.0 - terms.sum(dim=1)  # not -sum: a zero entropy must be +0.0, not -0.0
    return torch.where((count >= 2) & finite, entropy, torch.nan)


@dataclass(frozen=True)
class KernelPass:
    """What one fused pass over a layer's kernels yields (no per-kernel state).

    Attributes:
        n_sparse: ``()`` float64 number of sparse kernels (among the valid ones).
        n_valid: ``()`` float64 number of kernels used at all (finite ones when
            non-finite kernels are omitted, else all).
        moments: One [`Moments`][filterstats.kernels.Moments] per requested variant.
    """

    n_sparse: Tensor
    n_valid: Tensor
    moments: list[Moments]


def _sparse_bound(threshold: Tensor, dtype: torch.dtype, *, strict: bool) -> Tensor:
    """A bound in ``dtype`` that compares like the float64 ``threshold`` does.

    For values ``v`` of ``dtype``: ``v < threshold`` (strict) holds exactly when
    ``v < bound``, and ``v <= threshold`` exactly when ``v <= bound``, so per-kernel
    maxima need not be upcast.

    Args:
        threshold: ``()`` float64 threshold.
        dtype: The dtype of the values to compare.
        strict: Compare with ``<`` instead of ``<=``.

    Returns:
        ``()`` tensor of ``dtype``.
    """
    if dtype == torch.float64:
        return threshold
    rounded = threshold.to(dtype)
    if strict:  # smallest value of dtype not below the threshold
        return torch.where(
            rounded.to(torch.float64) < threshold,
            torch.nextafter(rounded, rounded.new_tensor(torch.inf)),
            rounded,
        )
    # largest value of dtype not above the threshold
    return torch.where(
        rounded.to(torch.float64) > threshold,
        torch.nextafter(rounded, rounded.new_tensor(-torch.inf)),
        rounded,
    )


def _sparsity_only(
    kernels: Tensor,
    threshold: Tensor,
    strict: bool,
    all_sparse: Tensor,
    omit_nonfinite: bool,
    chunk_bytes: int,
) -> KernelPass:
    """The sparsity count alone: per-kernel maxima in the compute dtype (no float64)."""
    n_rows, width = kernels.shape
    device = kernels.device
    dtype = _compute_dtype(kernels.dtype)
    itemsize = torch.finfo(dtype).bits // 8
    step = _rows_per_chunk(n_rows, width * itemsize, min(chunk_bytes, _CACHE_CHUNK_BYTES))
    bound = _sparse_bound(threshold, dtype, strict=strict)
    buffer = torch.empty(step, width, dtype=dtype, device=device)
    n_sparse = torch.zeros((), dtype=torch.float64, device=device)
    n_valid = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        magnitude = buffer[: stop - start]
        if kernels.dtype == dtype:
            torch.abs(kernels[start:stop], out=magnitude)
        else:  # half/bfloat16: upcast exactly, then |x|
            magnitude.copy_(kernels[start:stop]).abs_()
        # A strided max-pool: several times faster than amax over rows of K values.
        maxima = F.max_pool1d(magnitude.view(1, 1, -1), width, width).view(-1)
        sparse = (maxima < bound if strict else maxima <= bound) | all_sparse
        if omit_nonfinite:
            valid = torch.isfinite(maxima)
            sparse &= valid
            n_valid += valid.sum()
        else:
            n_valid += stop - start
        n_sparse += sparse.sum()
    return KernelPass(n_sparse=n_sparse, n_valid=n_valid, moments=[])


def _add_moments(count: Tensor, total: Tensor, outer: Tensor, columns: Tensor) -> None:
    r"""Add the moments of the kernels in the first ``K`` rows of ``(K + 1, rows)``.

    The last row holds each kernel's 0/1 weight ``k`` (the kernel rows are already 0
    where ``k`` is), so one product :math:`\sum_i a_i a_i^\top` of the augmented
    columns :math:`a_i = (y_i, k_i)` yields ``outer`` (:math:`\sum y y^\top`),
    ``total`` (:math:`\sum k y = \sum y`) and ``count`` (:math:`\sum k^2 = \sum k`)
    at once. Products run over fixed blocks of ``_MOMENT_BLOCK_ROWS`` kernels (chunks
    start at multiples of it), so the summation does not depend on the chunk size.
    """
    width = columns.shape[0] - 1
    n_rows = columns.shape[1]
    full = n_rows // _MOMENT_BLOCK_ROWS * _MOMENT_BLOCK_ROWS
    products = torch.zeros(width + 1, width + 1, dtype=columns.dtype, device=columns.device)
    if full:
        blocks = columns[:, :full].view(width + 1, -1, _MOMENT_BLOCK_ROWS).transpose(0, 1)
        products += torch.bmm(blocks, blocks.transpose(1, 2)).sum(dim=0)
    if full < n_rows:
        tail = columns[:, full:]
        products.addmm_(tail, tail.T)
    outer += products[:width, :width]
    total += products[:width, width]
    count += products[width, width]


#: A variant's 0/1 kept mask (None: all) and row weights (None: raw, all ones).
_Weights = tuple[Tensor | None, Tensor | None]


def _first_mean(block: Tensor, keep: Tensor | None, factor: Tensor | None) -> Tensor:
    """Mean of the counted, weighted kernels of a ``(K, rows)`` block (0 if none)."""
    columns = block if factor is None else block * factor
    count = float(block.shape[1]) if keep is None else keep.sum().to(torch.float64)
    mean = columns.sum(dim=1) / torch.clamp(torch.as_tensor(count, dtype=torch.float64), min=1.0)
    return torch.nan_to_num(mean, nan=0.0, posinf=0.0, neginf=0.0)


def kernel_pass(
    kernels: Tensor,
    threshold: Tensor,
    *,
    strict: bool,
    all_sparse: Tensor,
    variants: Sequence[tuple[bool, bool]] = (),
    omit_nonfinite: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> KernelPass:
    r"""Sparsity count and the moments of several kernel weightings in one read.

    Each chunk of kernels is read once: its per-kernel maxima decide which kernels are
    sparse (``max|f| <= threshold``, or ``<`` when ``strict``), and every variant
    ``(scale, drop_sparse)`` adds its moments: kernels divided by their own max|value|
    when ``scale``, sparse kernels left out when ``drop_sparse``. Nothing per kernel is
    kept beyond the chunk.

    On CPU, contiguous float32/float64 kernels go through the compiled loop of
    ``filterstats/_native`` when it is available ([`native_pass_available`][]): the
    same per-kernel operations, summed in registers (see the Performance page). The
    torch path, used otherwise, works as follows.

    Each chunk is converted once, exactly, into a transposed float64 ``(K, rows)``
    buffer; its column extrema give the per-kernel maxima. Each variant is then one
    row weight :math:`w_i` (``1 / max|f_i|`` or 1, times the 0/1 kept mask
    :math:`k_i`) and at most two passes over the chunk: :math:`y_i = w_i x_i - k_i c`
    into a second buffer (the raw variant shifts the buffer itself, last), where the
    shift :math:`c` is the variant's mean over the layer's first ``_SHIFT_ROWS``
    kernels: it avoids cancellation when the mean is large against the spread, and
    identical kernels give exactly zero. One batched float64 product of the columns
    :math:`(y_i, k_i)` over fixed blocks of ``_MOMENT_BLOCK_ROWS`` kernels then adds
    the outer products, the sum and the count at once. (float32 products, summed in
    float32, would leave spurious eigenvalues near 1e-7 of the largest, which moves
    the entropy of rank-deficient layers by up to 4e-6.)

    Args:
        kernels: ``(N, K)`` kernels as rows.
        threshold: ``()`` float64 sparsity threshold (``eps`` times the layer's max).
        strict: Sparse means ``<`` instead of ``<=``.
        all_sparse: ``()`` bool; when True every kernel counts as sparse (all-zero layer).
        variants: ``(scale, drop_sparse)`` per wanted moment set.
        omit_nonfinite: Leave out kernels holding NaN/inf everywhere; otherwise they
            propagate NaN into the moments that include them.
        chunk_bytes: Working memory per chunk; bounds peak memory.

    Returns:
        A [`KernelPass`][filterstats.kernels.KernelPass].
    """
    native = _native.kernel_pass(
        kernels,
        threshold,
        strict=strict,
        all_sparse=all_sparse,
        variants=variants,
        shift_rows=_SHIFT_ROWS,
        omit_nonfinite=omit_nonfinite,
    )
    if native is not None:
        return KernelPass(
            n_sparse=native.n_sparse,
            n_valid=native.n_valid,
            moments=[
                Moments(count=count, total=total, outer=outer, shift=shift)
                for (count, total, outer), shift in zip(native.moments, native.shifts)
            ],
        )
    if not variants:
        return _sparsity_only(kernels, threshold, strict, all_sparse, omit_nonfinite, chunk_bytes)
    n_rows, width = kernels.shape
    device = kernels.device
    f64 = torch.float64
    weighted = any(scale or drop_sparse for scale, drop_sparse in variants)
    # Per chunk: the float64 transposed rows, and the weighted rows of one variant.
    step = _rows_per_chunk(
        n_rows, (width + 1) * 8 * (1 + weighted), min(chunk_bytes, _CACHE_CHUNK_BYTES)
    )
    step = min(max(_MOMENT_BLOCK_ROWS, step // _MOMENT_BLOCK_ROWS * _MOMENT_BLOCK_ROWS), n_rows)
    # Each buffer has one more row for the kernels' 0/1 weights (see _add_moments).
    columns = torch.empty(width + 1, max(step, min(_SHIFT_ROWS, n_rows)), dtype=f64, device=device)
    scratch = torch.empty_like(columns) if weighted else columns
    threshold = threshold.to(f64)

    n_sparse = torch.zeros((), dtype=f64, device=device)
    n_valid = torch.zeros((), dtype=f64, device=device)
    counts = [torch.zeros((), dtype=f64, device=device) for _ in variants]
    totals = [torch.zeros(width, dtype=f64, device=device) for _ in variants]
    outers = [torch.zeros(width, width, dtype=f64, device=device) for _ in variants]
    # The raw variant shifts the chunk buffer in place: it goes last.
    order = sorted(range(len(variants)), key=lambda v: not any(variants[v]))

    def prepare(block: Tensor, rows: Tensor) -> tuple[Tensor, Tensor | None, list[_Weights]]:
        """Fill ``block`` with ``rows``; sparse mask, validity, each variant's weights."""
        block.copy_(rows.T)  # exact upcast; (K, rows) layout
        # max|x| per kernel from the column extrema: exact, NaN propagates.
        maxima = torch.maximum(block.amax(dim=0), block.amin(dim=0).neg_())
        valid = torch.isfinite(maxima) if omit_nonfinite else None
        if valid is not None:
            block.masked_fill_(~valid, 0.0)  # NaN * 0 is NaN: zero omitted kernels
        sparse = (maxima < threshold if strict else maxima <= threshold) | all_sparse
        if valid is not None:
            sparse &= valid
        weights: list[_Weights] = []
        for scale, drop_sparse in variants:
            keep = (~sparse if valid is None else ~sparse & valid) if drop_sparse else valid
            factor = None
            if scale or drop_sparse:
                # x * (1 / m): identical kernels still give identical rows, and a
                # product runs faster than a division.
                factor = (
                    torch.where(maxima > 0, maxima, 1.0).reciprocal_()
                    if scale
                    else torch.ones_like(maxima)
                )
                if keep is not None:
                    factor = torch.where(keep, factor, 0.0)
            weights.append((keep, factor))
        return sparse, valid, weights

    # Shifts: the mean of the first _SHIFT_ROWS counted kernels per variant.
    first = min(_SHIFT_ROWS, n_rows)
    shifts = [torch.zeros(width, dtype=f64, device=device) for _ in variants]
    if first:
        _, _, weights = prepare(columns[:width, :first], kernels[:first])
        shifts = [_first_mean(columns[:width, :first], keep, factor) for keep, factor in weights]
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        size = stop - start
        block = columns[:width, :size]
        sparse, valid, weights = prepare(block, kernels[start:stop])
        n_valid += valid.sum() if valid is not None else size
        n_sparse += sparse.sum()
        for v in order:
            keep, factor = weights[v]
            shift = shifts[v]
            if factor is not None:  # y = k (w x - c), k the 0/1 kept mask
                augmented = scratch[:, :size]
                rows = torch.mul(block, factor, out=augmented[:width])
                if keep is not None:
                    augmented[width].copy_(keep)
                else:
                    augmented[width].fill_(1.0)
                rows.addr_(shift, augmented[width], alpha=-1.0)
            else:  # the raw variant: x - c, in place (the buffer's last use)
                augmented = columns[:, :size]
                rows = block.sub_(shift[:, None])
                if valid is not None:
                    rows.masked_fill_(~valid, 0.0)
                    augmented[width].copy_(valid)
                else:
                    augmented[width].fill_(1.0)
            _add_moments(counts[v], totals[v], outers[v], augmented)
    moments = [
        Moments(count=count, total=total, outer=outer, shift=shift)
        for count, total, outer, shift in zip(counts, totals, outers, shifts)
    ]
    return KernelPass(n_sparse=n_sparse, n_valid=n_valid, moments=moments)


@dataclass(frozen=True)
class LayerSparsity:
    """A layer's maximum and sparsity count from one read (all ``()`` tensors).

    Attributes:
        top: float64 largest |value| (over finite kernels when they are omitted; NaN
            when a NaN propagates).
        finite: bool, every value is finite.
        n_valid: float64 number of kernels used (the finite ones when omitted).
        n_sparse: float64 number of sparse kernels among them.
    """

    top: Tensor
    finite: Tensor
    n_valid: Tensor
    n_sparse: Tensor


def layer_sparsity(
    kernels: Tensor, eps: float, *, strict: bool, omit_nonfinite: bool
) -> LayerSparsity | None:
    """The layer's maximum and its sparse kernels from one read, or ``None``.

    The compiled code writes every kernel's max|value| (a ninth of a 3x3 layer's
    size); the layer's maximum and the count (``max|f| <= eps * max|W|``, ``<`` when
    ``strict``; every kernel of an all-zero layer) then come from those maxima alone,
    with the same comparisons as [`layer_maxabs`][] followed by [`kernel_pass`][]
    (identical results). On CPU only, like the compiled pass; elsewhere, or without
    it (see [`native_pass_available`][]), ``None``: use those two.

    Args:
        kernels: ``(N, K)`` kernels as rows.
        eps: Sparsity threshold, fraction of the layer's largest |value|.
        strict: Sparse means ``<`` instead of ``<=``.
        omit_nonfinite: Leave out kernels holding NaN/inf (from the maximum too).

    Returns:
        A [`LayerSparsity`][filterstats.kernels.LayerSparsity], or ``None``.
    """
    native = _native.sparsity(kernels, eps, strict=strict, omit_nonfinite=omit_nonfinite)
    if native is None:
        return None
    f64 = torch.float64
    return LayerSparsity(
        top=torch.tensor(native.top, dtype=f64),
        finite=torch.tensor(native.finite),
        n_valid=torch.tensor(native.n_valid, dtype=f64),
        n_sparse=torch.tensor(native.n_sparse, dtype=f64),
    )


def layer_maxabs(
    kernels: Tensor, *, omit_nonfinite: bool = False, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> tuple[Tensor, Tensor]:
    """Largest |value| of a layer, and whether every value is finite.

    Without ``omit_nonfinite`` this is one reduction (``aminmax``, no copy; NaN or inf
    propagate into the maximum). With it, the maximum is over the kernels that hold
    only finite values, computed in chunks.

    Args:
        kernels: ``(N, K)`` kernels as rows.
        omit_nonfinite: Leave out kernels holding NaN/inf.
        chunk_bytes: Working memory per chunk (``omit_nonfinite`` only).

    Returns:
        ``(top, finite)``: ``()`` float64 (0 for an empty layer) and ``()`` bool.
    """
    f64 = torch.float64
    device = kernels.device
    if kernels.numel() == 0:
        empty = torch.zeros((), dtype=f64, device=device)
        return empty, torch.ones((), dtype=torch.bool, device=device)
    if not omit_nonfinite:
        low, high = torch.aminmax(kernels)
        top = torch.maximum(-low, high).to(f64)
        return top, torch.isfinite(top)
    n_rows, width = kernels.shape
    dtype = _compute_dtype(kernels.dtype)
    itemsize = torch.finfo(dtype).bits // 8
    step = _rows_per_chunk(n_rows, width * itemsize, min(chunk_bytes, _CACHE_CHUNK_BYTES))
    buffer = torch.empty(step, width, dtype=dtype, device=device)
    top = torch.zeros((), dtype=dtype, device=device)
    finite = torch.ones((), dtype=torch.bool, device=device)
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        chunk = buffer[: stop - start]
        chunk.copy_(kernels[start:stop]).abs_()
        maxima = F.max_pool1d(chunk.view(1, 1, -1), width, width).view(-1)
        ok = torch.isfinite(maxima)
        finite &= ok.all()
        top = torch.maximum(top, torch.where(ok, maxima, 0.0).amax())
    return top.to(f64), finite


def finite_rows(rows: Tensor, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tensor:
    """Which rows hold only finite values, in chunks (no bool copy of the whole matrix).

    Args:
        rows: ``(n, D)``.
        chunk_bytes: Working memory per chunk.

    Returns:
        ``(n,)`` bool.
    """
    n_rows, width = rows.shape
    result = torch.empty(n_rows, dtype=torch.bool, device=rows.device)
    step = _rows_per_chunk(n_rows, width, min(chunk_bytes, _CACHE_CHUNK_BYTES))
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        result[start:stop] = torch.isfinite(rows[start:stop]).all(dim=1)
    return result


def entropy_threshold(n_kernels: Tensor) -> Tensor:
    r"""The fitted entropy normaliser of torchconvquality for ``n`` kernels.

    A logistic fit in :math:`\log_2 n`: :math:`L / (1 + e^{-k(\log_2 n - x_0)}) + b`
    with ``L, x0, k, b = 1.2618047, 2.30436435, 0.88767525, -0.31050834`` (the
    constants of torchconvquality 0.3.0, fitted to the entropy of random kernels).

    Args:
        n_kernels: Number of kernels, any shape, float.

    Returns:
        The threshold, same shape, float64.
    """
    height, midpoint, steepness, offset = 1.2618047, 2.30436435, 0.88767525, -0.31050834
    log_n = torch.log2(n_kernels.to(torch.float64))
    return height / (1.0 + torch.exp(-steepness * (log_n - midpoint))) + offset


@contextlib.contextmanager
def _ieee_float32_matmul(device: torch.device) -> Iterator[None]:
    """Full-precision float32 matrix products on CUDA for the duration, then as before.

    TensorFloat-32 (``torch.backends.cuda.matmul.fp32_precision = "tf32"``, or the
    older ``allow_tf32``) rounds the inputs of float32 products to 10 mantissa bits,
    about 1e-3 relative per cosine. The Gram products run inside this context, which
    asks for IEEE float32 and restores the user's setting afterwards. A no-op on
    other devices.

    Args:
        device: Where the products run.

    Yields:
        Nothing.
    """
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the one API to use
        previous = matmul.fp32_precision
        matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = previous
    else:
        allowed = matmul.allow_tf32
        matmul.allow_tf32 = False
        try:
            yield
        finally:
            matmul.allow_tf32 = allowed


def _inverse_norms(rows: Tensor, row_mask: Tensor | None) -> Tensor:
    """1 / ||row|| in float64 (0 for zero or excluded rows), shape ``(..., n)``."""
    # In the rows' own dtype: dtype=float64 here would upcast a copy of the whole layer.
    norms = torch.linalg.vector_norm(rows, dim=-1).to(torch.float64)
    usable = norms > 0
    if row_mask is not None:
        usable = usable & row_mask
    return torch.where(usable, 1.0 / torch.where(usable, norms, 1.0), 0.0)


def offdiag_abs_gram_sum(
    filters: Tensor,
    *,
    row_mask: Tensor | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    block_rows: int = _GRAM_BLOCK_ROWS,
) -> Tensor:
    r"""Sum of :math:`|\hat W \hat W^\top|` off the diagonal, :math:`\hat W` = unit rows.

    Rows are L2-normalised (all-zero rows stay zero). Only the upper triangle of the
    Gram matrix is computed, in row panels of ``block_rows`` rows: panel ``p`` is one
    product of its rows with every row from its first one on (its diagonal square
    and everything right of it, counted twice by symmetry). The work is half a Gram
    product times ``1 + block_rows / n``, in products wide enough to run near the
    matrix-multiply peak. Each panel is divided by the outer product of the row norms
    after the product, so no normalised copy of the weights is made.

    Args:
        filters: ``(n, D)`` output filters as rows.
        row_mask: ``(n,)`` bool; rows where False are excluded (treated as zero; they
            may hold NaN).
        chunk_bytes: Working memory per product; bounds peak memory.
        block_rows: Rows per panel.

    Returns:
        0-d float64 tensor: :math:`\sum_{i \ne j} |\hat w_i \cdot \hat w_j|`.
    """
    dtype = _compute_dtype(filters.dtype)
    rows = filters if filters.dtype == dtype else filters.to(dtype)
    if row_mask is not None:
        # Excluded rows may hold NaN, which a product would spread: zero them (a copy of
        # this one layer, only under this policy).
        rows = torch.where(row_mask[:, None], rows, 0.0)
    inverse = _inverse_norms(rows, row_mask)
    with _ieee_float32_matmul(filters.device):
        return _panel_sums(rows, inverse, max(block_rows, 1), chunk_bytes)


def _panel_sums(rows: Tensor, inverse: Tensor, panel: int, chunk_bytes: int) -> Tensor:
    """The panels of [`offdiag_abs_gram_sum`][filterstats.kernels.offdiag_abs_gram_sum]."""
    n_rows = rows.shape[0]
    total = torch.zeros((), dtype=torch.float64, device=rows.device)
    itemsize = torch.finfo(rows.dtype).bits // 8
    for low in range(0, n_rows, panel):
        high = min(low + panel, n_rows)
        # Sub-panels keep the (rows, n - low) product within chunk_bytes.
        step = _rows_per_chunk(high - low, (n_rows - low) * (itemsize + 8), chunk_bytes)
        for start in range(low, high, step):
            stop = min(start + step, high)
            # Column j of row i is the pair (start + i, start + j), j >= i outside the
            # square [start, stop); the square holds its pairs twice and the diagonal.
            # With S = sum |cos| over the whole product, Q over the square and D its
            # diagonal, each pair j > i once is S - (Q + D) / 2; ordered pairs, twice.
            gram = (rows[start:stop] @ rows[start:].T).abs_()  # exact in its dtype
            gram = gram.to(torch.float64)
            row_inverse = inverse[start:stop]
            whole = torch.dot(torch.mv(gram, inverse[start:]), row_inverse)
            square = gram[:, : stop - start]
            inside = torch.dot(torch.mv(square, row_inverse), row_inverse)
            diagonal = torch.dot(torch.diagonal(square) * row_inverse, row_inverse)
            total += 2.0 * whole - inside - diagonal
    return total


def offdiag_abs_gram_sum_batched(filters: Tensor, *, row_mask: Tensor | None = None) -> Tensor:
    r"""[`offdiag_abs_gram_sum`][] for a stack of same-shaped small layers at once.

    One batched full Gram product (``bmm``) replaces a Python loop over layers, which
    dominates the time of small layers.

    Args:
        filters: ``(B, n, D)`` output filters of ``B`` layers.
        row_mask: ``(B, n)`` bool; rows where False are excluded.

    Returns:
        ``(B,)`` float64 sums of :math:`|\hat w_i \cdot \hat w_j|` over :math:`i \ne j`.
    """
    dtype = _compute_dtype(filters.dtype)
    rows = filters if filters.dtype == dtype else filters.to(dtype)
    if row_mask is not None:
        rows = torch.where(row_mask[:, :, None], rows, 0.0)
    inverse = _inverse_norms(rows, row_mask)
    with _ieee_float32_matmul(filters.device):
        gram = torch.bmm(rows, rows.transpose(1, 2)).to(torch.float64)
    gram *= inverse[:, :, None]
    gram *= inverse[:, None, :]
    gram.abs_()
    return gram.sum(dim=(1, 2)) - torch.diagonal(gram, dim1=1, dim2=2).sum(dim=1)


def pair_count(n: Tensor) -> Tensor:
    """``n (n - 1)``, the number of ordered pairs of ``n`` filters.

    Args:
        n: Filter counts, any shape.

    Returns:
        ``n (n - 1)`` in float64, same shape.
    """
    n = n.to(torch.float64)
    return n * (n - 1.0)


# ------------------------------------------------------------------ frequency


def _dct_matrix(size: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""The orthonormal 1-D DCT-II matrix of length ``size``.

    :math:`C_{un} = \alpha_u \cos\big(\pi (2n + 1) u / (2k)\big)` with
    :math:`\alpha_0 = \sqrt{1/k}` and :math:`\alpha_u = \sqrt{2/k}` otherwise, so that
    :math:`C C^\top = I` (``scipy.fft.dct(x, norm="ortho")`` is :math:`C x`).

    Args:
        size: Length ``k >= 1``.
        dtype: Floating dtype of the result.

    Returns:
        ``(k, k)``: row ``u`` is the basis vector of frequency ``u``.
    """
    n = torch.arange(size, dtype=torch.float64)
    u = n[:, None]
    matrix = torch.cos(torch.pi * (2.0 * n[None, :] + 1.0) * u / (2.0 * size))
    scale = torch.full_like(u, math.sqrt(2.0 / size))
    scale[0] = math.sqrt(1.0 / size)
    matrix *= scale
    return matrix.to(dtype)


def dct_basis(kernel_size: Sequence[int], *, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""The orthonormal n-D DCT-II of a flattened kernel as one ``(K, K)`` matrix.

    For a kernel :math:`X` of shape ``kernel_size`` flattened row-major to
    :math:`x` (as every pass here flattens kernels), the n-D DCT-II coefficients
    flattened the same way are :math:`D x` with
    :math:`D = C_{k_1} \otimes \dots \otimes C_{k_d}` (Kronecker product of
    `_dct_matrix`): for 2-D,
    :math:`\operatorname{vec}(C_h X C_w^\top)`, what
    ``scipy.fft.dctn(X, norm="ortho")`` gives. :math:`D` is orthogonal, so a kernel's
    energy is conserved (Parseval).

    Args:
        kernel_size: Spatial kernel size, e.g. ``(3, 3)``.
        dtype: Floating dtype of the result.

    Returns:
        ``(K, K)`` with ``K = prod(kernel_size)``.
    """
    basis = torch.ones(1, 1, dtype=torch.float64)
    for size in kernel_size:
        basis = torch.kron(basis, _dct_matrix(int(size)))
    return basis.to(dtype)


#: Band index of [`frequency_bands`][filterstats.kernels.frequency_bands].
_BAND_DC, _BAND_LOW, _BAND_HIGH = 0, 1, 2


def frequency_bands(kernel_size: Sequence[int]) -> Tensor:
    r"""The band of each DCT-II frequency of a kernel: DC, low or high.

    Frequency :math:`u = (u_1, \dots, u_d)` (one index per axis, ``0 <= u_a < k_a``;
    basis vector :math:`u_a` oscillates at :math:`u_a / (2 k_a)` cycles per tap) is

    * DC (``0``) when every :math:`u_a = 0`;
    * low (``1``) when otherwise every :math:`2 u_a < k_a`: below half the Nyquist
      frequency on every axis;
    * high (``2``) otherwise.

    For 3x3 kernels: DC is (0, 0); low is (0, 1), (1, 0), (1, 1); high the other five.
    For 5x5: low is every non-DC frequency with both indices at most 2 (8 of them),
    for 7x7 at most 3 (15). A 1x1 kernel is DC only; a 2x2 kernel has no low band.

    Args:
        kernel_size: Spatial kernel size, e.g. ``(3, 3)``.

    Returns:
        ``(K,)`` int64 band indices in the row-major order of
        [`dct_basis`][filterstats.kernels.dct_basis].
    """
    grids = torch.meshgrid(*(torch.arange(int(k)) for k in kernel_size), indexing="ij")
    sizes = [int(k) for k in kernel_size]
    dc = torch.ones(grids[0].shape, dtype=torch.bool)
    low = torch.ones(grids[0].shape, dtype=torch.bool)
    for index, size in zip(grids, sizes):
        dc &= index == 0
        low &= 2 * index < size
    bands = torch.where(dc, _BAND_DC, torch.where(low, _BAND_LOW, _BAND_HIGH))
    return bands.reshape(-1)


def frequency_energy(
    count: Tensor, total: Tensor, outer: Tensor, shift: Tensor | None, basis: Tensor
) -> Tensor:
    r"""Summed energy of the kernels at each DCT-II frequency, batched over layers.

    From the moments of [`kernel_pass`][filterstats.kernels.kernel_pass] (shift
    :math:`c`): the uncentred second moment is
    :math:`Q = \sum_i x_i x_i^\top = O + c s^\top + s c^\top + n c c^\top`, and the
    energy at frequency :math:`j` is
    :math:`e_j = \sum_i (D x_i)_j^2 = (D Q D^\top)_{jj}`: one batched product over
    the layers of one kernel size, no second read of the kernels.

    Args:
        count: ``(L,)`` kernels counted per layer.
        total: ``(L, K)`` sums of the shifted kernels.
        outer: ``(L, K, K)`` outer-product sums of the shifted kernels.
        shift: ``(L, K)`` shifts, or ``None`` (moments of the kernels themselves).
        basis: ``(K, K)`` float64 [`dct_basis`][filterstats.kernels.dct_basis].

    Returns:
        ``(L, K)`` float64 energies (sum of squared coefficients), frequencies in the
        row-major order of ``basis``; their sum is :math:`\operatorname{tr} Q`.
    """
    second = outer
    if shift is not None:
        cross = shift[:, :, None] * total[:, None, :]
        second = (
            outer
            + cross
            + cross.transpose(1, 2)
            + count[:, None, None] * shift[:, :, None] * shift[:, None, :]
        )
    basis = basis.to(device=second.device, dtype=torch.float64)
    projected = torch.matmul(basis, second)  # (L, K, K): D Q
    # diag(D Q D^T); rounding can leave -1e-31 where the energy is 0.
    return (projected * basis).sum(dim=2).clamp_min_(0.0)
