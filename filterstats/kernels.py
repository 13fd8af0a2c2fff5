"""Batched, memory-bounded maths on convolution weights.

These are the building blocks of [`filterstats.metrics`][]: each works on the kernels
of one layer, or on a batch of per-layer statistics, on the weights' own device, with
no host synchronisation. Public metric functions validate their inputs; these do not.

Memory: every pass over a layer works in row chunks of at most ``chunk_bytes`` bytes
of working storage, so the extra memory for any layer is bounded by a constant
independent of the layer's size (plus the per-kernel maxima, 8 bytes per kernel).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "compute_dtype",
    "entropy_threshold",
    "kernel_maxabs",
    "kernel_moments",
    "offdiag_abs_gram_sum",
    "pair_count",
    "variance_entropy",
]

#: Working memory of one chunk (bytes). 64 MiB keeps peak memory small while the
#: matrix products stay large enough to run at full speed.
DEFAULT_CHUNK_BYTES = 64 * 2**20

#: Eigenvalues of a layer's kernel covariance below this fraction of the kernels'
#: summed squared norm are treated as zero. Without it, a layer of identical kernels
#: (zero variance) shows a false entropy from float rounding; true eigenvalues this
#: small change the entropy by less than 1e-8.
EIGENVALUE_FLOOR = 1e-10


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Floating dtype to compute in: float64 stays, everything else becomes float32.

    Args:
        dtype: The weights' dtype.

    Returns:
        ``torch.float64`` for float64 input, else ``torch.float32``.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows_per_chunk(n_rows: int, row_bytes: int, chunk_bytes: int) -> int:
    return max(1, min(n_rows, chunk_bytes // max(row_bytes, 1)))


def kernel_maxabs(kernels: Tensor) -> Tensor:
    """Largest absolute value of each kernel.

    Args:
        kernels: ``(N, K)`` kernels as rows (any floating dtype).

    Returns:
        ``(N,)`` in float64. NaN where a kernel holds NaN.
    """
    # amax/amin avoid materialising |kernels| (one pass, no full-size temporary).
    if kernels.shape[0] == 0:
        return kernels.new_zeros(0, dtype=torch.float64)
    high = kernels.amax(dim=1)
    low = kernels.amin(dim=1)
    return torch.maximum(high.to(torch.float64), low.to(torch.float64).neg())


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
    :math:`Q - s s^\top / n`.

    Args:
        kernels: ``(N, K)`` kernels as rows.
        weights: ``(N,)`` row weights (0/1 masks select rows), or ``None``.
        scale: ``(N,)`` positive divisors per row, or ``None``.
        chunk_bytes: Working memory per chunk; bounds peak memory.

    Returns:
        ``(count (), sum (K,), outer (K, K))``, float64, on ``kernels.device``.
    """
    n_rows, width = kernels.shape
    device = kernels.device
    total = torch.zeros(width, dtype=torch.float64, device=device)
    outer = torch.zeros(width, width, dtype=torch.float64, device=device)
    # float64 accumulation: a float32 k*k Gram is off by ~1e-4 relative, enough to
    # move the entropy in the 5th digit.
    step = _rows_per_chunk(n_rows, width * 16, chunk_bytes)
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        rows = kernels[start:stop].to(torch.float64)
        if scale is not None:
            rows = rows / scale[start:stop, None]
        if weights is None:
            weighted = rows
        else:
            row_weights = weights[start:stop, None].to(torch.float64)
            # Zero excluded rows outright: a NaN row times weight 0 is still NaN.
            rows = torch.where(row_weights > 0, rows, 0.0)
            weighted = rows * row_weights
        total += weighted.sum(dim=0)
        outer += weighted.T @ rows
    if weights is None:
        count = torch.tensor(float(n_rows), dtype=torch.float64, device=device)
    else:
        count = weights.to(torch.float64).sum()
    return count, total, outer


def variance_entropy(count: Tensor, total: Tensor, outer: Tensor) -> Tensor:
    r"""Shannon entropy (base 10) of the explained-variance ratios, batched over layers.

    :math:`C = Q - s s^\top / n` is the kernels' scatter matrix; its eigenvalues
    :math:`\lambda_j` are the squared singular values of the centred kernels, and
    :math:`H = -\sum_j p_j \log_{10} p_j` with :math:`p_j = \lambda_j / \sum \lambda`.

    Args:
        count: ``(L,)`` number of kernels per layer (weighted).
        total: ``(L, K)`` kernel sums.
        outer: ``(L, K, K)`` outer-product sums.

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
    floor = EIGENVALUE_FLOOR * torch.diagonal(outer, dim1=1, dim2=2).sum(dim=1)
    eigenvalues = torch.where(eigenvalues > floor[:, None], eigenvalues, 0.0)
    variance = eigenvalues.sum(dim=1, keepdim=True)
    ratio = eigenvalues / torch.where(variance > 0, variance, 1.0)
    terms = torch.where(ratio > 0, ratio * torch.log10(torch.where(ratio > 0, ratio, 1.0)), 0.0)
    entropy = -terms.sum(dim=1)
    return torch.where((count >= 2) & finite, entropy, torch.nan)


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


def offdiag_abs_gram_sum(
    filters: Tensor,
    *,
    row_mask: Tensor | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Tensor:
    r"""Sum of :math:`|\hat W \hat W^\top|` off the diagonal, :math:`\hat W` = unit rows.

    Rows are L2-normalised (all-zero rows stay zero). Only the upper triangle of the
    Gram matrix is computed, in row chunks, so the work is half a Gram product and the
    extra memory is one chunk.

    Args:
        filters: ``(n, D)`` output filters as rows.
        row_mask: ``(n,)`` bool; rows where False are excluded (treated as zero).
        chunk_bytes: Working memory per chunk; bounds peak memory.

    Returns:
        0-d float64 tensor: :math:`\sum_{i \ne j} |\hat w_i \cdot \hat w_j|`.
    """
    n_rows = filters.shape[0]
    dtype = compute_dtype(filters.dtype)
    rows = filters.to(dtype)
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    if row_mask is not None:
        rows = torch.where(row_mask[:, None], rows, 0.0)
        norms = torch.where(row_mask[:, None], norms, 1.0)
    unit = rows / torch.where(norms > 0, norms, 1.0)
    total = torch.zeros((), dtype=torch.float64, device=filters.device)
    itemsize = torch.finfo(dtype).bits // 8
    step = _rows_per_chunk(n_rows, n_rows * itemsize * 2, chunk_bytes)
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        gram = unit[start:stop] @ unit[start:].T
        block = gram[:, : stop - start]
        diagonal = torch.diagonal(block).abs().sum(dtype=torch.float64)
        total += block.abs().sum(dtype=torch.float64) - diagonal
        total += 2.0 * gram[:, stop - start :].abs().sum(dtype=torch.float64)
    return total


def pair_count(n: Tensor) -> Tensor:
    """``n (n - 1)``, the number of ordered pairs of ``n`` filters.

    Args:
        n: Filter counts, any shape.

    Returns:
        ``n (n - 1)`` in float64, same shape.
    """
    n = n.to(torch.float64)
    return n * (n - 1.0)
