"""Batched maths of convolution spectra: operator geometry, transfer matrices, bounds.

A 2-D convolution with ``c_in`` input and ``c_out`` output channels on an ``h x w``
input is a linear operator ``A`` from ``R^(c_in h w)`` to ``R^(c_out m_h m_w)``. For
circular padding and stride 1 it is block-circulant, and the 2-D discrete Fourier
transform block-diagonalises it: its singular values are those of the ``c_out x c_in``
transfer matrices ``A(u, v) = sum_(a, b) W[:, :, a, b] exp(-2 pi i (u a / h + v b / w))``,
one per frequency (Sedghi, Gupta & Long, "The Singular Values of Convolutional
Layers", ICLR 2019). Everything else reduces to that case:

- stride ``s`` that divides the input size: the polyphase reshaping (input pixel
  ``(s i + a, s j + b)`` becomes pixel ``(i, j)`` of input channel ``(c, a, b)``, an
  orthogonal permutation) turns it into a stride-1 circular convolution on an
  ``h/s x w/s`` grid with ``c_in s^2`` input channels: exact.
- no padding and a kernel no longer than the stride (1x1 convolutions, patch
  embeddings): disjoint patches, a block-diagonal operator: exact.
- circular padding with a stride that does not divide the input: the output rows are
  rows of the stride-1 circulant, so ``||A||_2 <= sqrt(r) ||C_n||_2`` (``r``: the most
  times a row is taken). A bound.
- zero, reflect and replicate padding: the operator is a row selection of a circular
  convolution on a grid of size ``N >= n + pad_before + pad_after`` applied to the
  padded input, so ``||A||_2 <= ||P||_2 ||C_N||_2`` with ``P`` the padding operator
  (``||P||_2 = 1`` for zeros). A bound of the spectral norm, not the singular values.

Groups are independent blocks (a block-diagonal operator): every group is one more
batch dimension. Real kernels give ``A(-u, -v) = conj(A(u, v))``, whose singular values
are equal, so only the frequencies of a half plane are computed, each weighted by how
often it occurs.

The spectral norm alone is certified per frequency by a Cholesky factorisation of
``c I - G`` (``G`` the Hermitian Gram matrix of the smaller side, built from the
kernel's tap cross-products by [`offset_grams`][], [`grams_at`][]; [`certify_below`][]),
with a Lanczos lower bound ([`lanczos_lower`][]). The older alternative is the Gram
iteration (Delattre, Barthélemy, Araujo &
Allauzen, "Efficient Bound of Lipschitz Constant for Convolutional Layers by Gram
Iteration", ICML 2023): ``G_1 = A^H A``, ``G_(t+1) = G_t^2`` (rescaled to unit Frobenius
norm), and ``sigma_1 = lambda_1(G_t)^(1 / 2^t) <= ||G_t||_F^(1 / 2^t)`` at every step. Here
the Frobenius bound is sharpened by Cauchy interlacing: with ``theta_1 >= ... >= theta_m``
the Ritz values of ``G_t`` on an orthonormal basis ``Q`` (a subspace iteration that rides
along),

    theta_1 <= lambda_1(G_t) <= sqrt(||G_t||_F^2 - theta_2^2 - ... - theta_m^2),

a certified bracket of ``sigma_1`` per frequency; a layer stops when the largest upper
bound is within ``(1 + tol)`` of the largest lower bound.

Nothing here checks its arguments: ``filterstats.spectra`` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Geometry",
    "Plan",
    "certify_below",
    "frequencies",
    "gram_bounds",
    "gram_error",
    "grams_at",
    "lanczos_lower",
    "offset_grams",
    "offset_phases",
    "operator_frobenius_sq",
    "phase_matrix",
    "plan_operator",
    "polyphase_taps",
    "source_index",
    "tap_gram",
    "top_eigenvalue",
    "transfer_matrices",
]

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")


@dataclass(frozen=True)
class Geometry:
    """Geometry of one 2-D convolution operator (a 1-D one has height 1).

    Attributes:
        in_size: Spatial input size ``(h, w)`` of the operator.
        out_size: Spatial output size ``(m_h, m_w)``.
        kernel: Kernel size ``(k_h, k_w)`` (taps, before dilation).
        stride: Stride per dimension.
        dilation: Dilation per dimension.
        pads: ``((top, bottom), (left, right))`` padding.
        padding_mode: ``"zeros"``, ``"circular"``, ``"reflect"`` or ``"replicate"``.
    """

    in_size: tuple[int, int]
    out_size: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]
    padding_mode: str

    def span(self, dim: int) -> int:
        """Effective (dilated) kernel length along ``dim``."""
        return self.dilation[dim] * (self.kernel[dim] - 1) + 1

    def expected_out(self) -> tuple[int, int]:
        """Output size that the padding, kernel and stride give for ``in_size``."""
        sizes = []
        for dim in range(2):
            padded = self.in_size[dim] + sum(self.pads[dim])
            sizes.append((padded - self.span(dim)) // self.stride[dim] + 1)
        return sizes[0], sizes[1]


@dataclass(frozen=True)
class Plan:
    """How a layer's operator is reduced to circular transfer matrices.

    Attributes:
        method: ``"exact-circular"``, ``"exact-circular-polyphase"``, ``"exact-patch"``,
            ``"bound-row-selection"`` or ``"bound-embedding"``.
        exact: Whether the transfer matrices' singular values are the operator's.
        grid: Size ``(N_h, N_w)`` of the circular grid (a multiple of ``stride``).
        stride: Stride of the polyphase reshaping per dimension (1 for ``"select"``).
        copy_factor: ``||P||_2`` of the padding operator in the bound (1 when exact).
        dims: Per dimension ``"patch"``, ``"circular"``, ``"select"`` or ``"embed"``.
    """

    method: str
    exact: bool
    grid: tuple[int, int]
    stride: tuple[int, int]
    copy_factor: float
    dims: tuple[str, str]

    @property
    def polyphase_grid(self) -> tuple[int, int]:
        """Grid of the stride-1 circular convolution after the polyphase reshaping."""
        return self.grid[0] // self.stride[0], self.grid[1] // self.stride[1]


def source_index(n: int, before: int, after: int, mode: str) -> Tensor:
    """Which input position each padded position reads, ``-1`` for a zero.

    Args:
        n: Input length.
        before: Padding before.
        after: Padding after.
        mode: A padding mode as PyTorch's ``F.pad`` applies it.

    Returns:
        ``(n + before + after,)`` int64 indices into the input.
    """
    x = torch.arange(-before, n + after)
    if mode == "zeros":
        return torch.where((x >= 0) & (x < n), x, torch.full_like(x, -1))
    if mode == "circular":
        return x % n
    if mode == "replicate":
        return x.clamp(0, n - 1)
    if mode == "reflect":
        if n == 1:
            return torch.zeros_like(x)
        period = 2 * (n - 1)
        y = x % period
        return torch.where(y >= n, period - y, y)
    raise ValueError(f"unknown padding mode {mode!r}")


def _copy_factor(n: int, before: int, after: int, mode: str) -> float:
    """``||P||_2`` of the padding operator along one dimension: sqrt(max copies)."""
    src = source_index(n, before, after, mode)
    valid = src[src >= 0]
    if valid.numel() == 0:
        return 0.0
    return math.sqrt(int(torch.bincount(valid, minlength=n).max()))


def plan_operator(geometry: Geometry, *, assume_circular: bool = False) -> Plan:
    """Choose the exact reduction, or the bound, for one operator.

    Per dimension, in this order:

    - ``"patch"``: no padding and a (dilated) kernel no longer than the stride:
      disjoint patches (the input is truncated to the ``m s`` positions read); exact.
    - ``"circular"``: circular padding, a stride that divides the input ``n`` and
      ``n / s`` outputs: a polyphase circulant; exact.
    - ``"select"``: other circular padding: the output rows are rows ``s i mod n`` of
      the stride-1 circulant on ``n``, so ``||A|| <= sqrt(r) ||C_n||`` with ``r`` the
      most times a row is taken; a bound.
    - ``"embed"``: zero, reflect or replicate padding: the padded input embedded in a
      grid ``N >= n + pad`` (a multiple of the stride) on which the convolution does not
      wrap, so ``||A|| <= ||P|| ||S C_N||`` with ``P`` the padding operator (copies a
      value at most ``c`` times: ``||P|| = sqrt(c)``, 1 for zeros); a bound.

    Args:
        geometry: The operator's geometry.
        assume_circular: Treat the padding as circular whatever the module uses
            (the setting of Sedghi et al.).

    Returns:
        The plan.
    """
    mode = "circular" if assume_circular else geometry.padding_mode
    dims: list[str] = []
    grid: list[int] = []
    stride: list[int] = []
    factor = 1.0
    for dim in range(2):
        n = geometry.in_size[dim]
        m = geometry.out_size[dim]
        s = geometry.stride[dim]
        before, after = geometry.pads[dim]
        span = geometry.span(dim)
        if before == 0 and after == 0 and span <= s:
            dims.append("patch")
            grid.append(m * s)
            stride.append(s)
        elif mode == "circular" and n % s == 0 and m == n // s:
            dims.append("circular")
            grid.append(n)
            stride.append(s)
        elif mode == "circular":
            dims.append("select")
            grid.append(n)
            stride.append(1)
            rows = (s * torch.arange(m)) % n
            factor *= math.sqrt(int(torch.bincount(rows, minlength=n).max()))
        else:
            dims.append("embed")
            padded = n + before + after
            grid.append(-(-padded // s) * s)
            stride.append(s)
            factor *= _copy_factor(n, before, after, mode)
    if "embed" in dims:
        method, exact = "bound-embedding", False
    elif "select" in dims:
        method, exact = "bound-row-selection", False
    elif "circular" not in dims:
        method, exact = "exact-patch", True
    elif geometry.stride == (1, 1):
        method, exact = "exact-circular", True
    else:
        method, exact = "exact-circular-polyphase", True
    return Plan(
        method, exact, (grid[0], grid[1]), (stride[0], stride[1]), factor, (dims[0], dims[1])
    )


def polyphase_taps(
    weight: Tensor, groups: int, geometry: Geometry, plan: Plan
) -> tuple[Tensor, tuple[int, int]]:
    """The kernel as polyphase taps of the stride-1 circular convolution on the grid.

    Tap ``(j_h, j_w)`` sits at grid position ``d j mod N`` per dimension, which is
    phase ``a = pos mod s`` (an input channel) at tap ``pos // s`` of the reshaped grid.

    Args:
        weight: ``(c_out, c_in / groups, k_h, k_w)`` in operator orientation.
        groups: Convolution groups.
        geometry: The operator's geometry.
        plan: Its plan.

    Returns:
        Taps ``(T, groups, p, q)`` with ``p = c_out / groups`` and
        ``q = c_in / groups * s_h * s_w``, and the tap grid ``(k'_h, k'_w)``,
        ``T = k'_h k'_w``.
    """
    c_out, c_in_group = weight.shape[:2]
    phase: list[Tensor] = []
    tap: list[Tensor] = []
    for dim in range(2):
        position = (geometry.dilation[dim] * torch.arange(geometry.kernel[dim])) % plan.grid[dim]
        phase.append(position % plan.stride[dim])
        tap.append(position // plan.stride[dim])
    kh, kw = int(tap[0].max()) + 1, int(tap[1].max()) + 1
    s_h, s_w = plan.stride
    taps = weight.new_zeros(s_h, s_w, kh, kw, c_out, c_in_group)
    jh, jw = torch.meshgrid(
        torch.arange(geometry.kernel[0]), torch.arange(geometry.kernel[1]), indexing="ij"
    )
    device = weight.device
    index = (phase[0][jh], phase[1][jw], tap[0][jh], tap[1][jw])
    taps.index_put_(tuple(i.to(device) for i in index), weight.permute(2, 3, 0, 1), accumulate=True)
    p = c_out // groups
    taps = taps.reshape(s_h, s_w, kh, kw, groups, p, c_in_group)
    taps = taps.permute(2, 3, 4, 5, 6, 0, 1).reshape(kh * kw, groups, p, c_in_group * s_h * s_w)
    return taps, (kh, kw)


def frequencies(grid: tuple[int, int], taps: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """The frequencies to compute and how often each occurs in the full spectrum.

    A dimension with one tap (or a grid of one) has a constant transfer matrix: one
    frequency, weighted by the grid size. Conjugate symmetry halves the last
    non-constant dimension (frequencies ``0 .. P // 2``, weight 2 except ``0`` and
    ``P / 2``).

    Args:
        grid: Polyphase grid ``(P_h, P_w)``.
        taps: Tap grid ``(k'_h, k'_w)``.

    Returns:
        ``(u, v, weight)``: int64 frequency indices and float64 weights, ``(F,)`` each;
        the weights sum to ``P_h P_w``.
    """
    constant = [grid[d] == 1 or taps[d] == 1 for d in range(2)]
    half = 1 if not constant[1] else (0 if not constant[0] else -1)
    axes: list[tuple[Tensor, Tensor]] = []
    for dim in range(2):
        size = grid[dim]
        if constant[dim]:
            axes.append((torch.zeros(1, dtype=torch.int64), torch.full((1,), float(size))))
        elif dim == half:
            index = torch.arange(size // 2 + 1)
            weight = torch.full((index.numel(),), 2.0)
            weight[0] = 1.0
            if size % 2 == 0:
                weight[-1] = 1.0
            axes.append((index, weight))
        else:
            axes.append((torch.arange(size), torch.ones(size)))
    u = axes[0][0].repeat_interleave(axes[1][0].numel())
    v = axes[1][0].repeat(axes[0][0].numel())
    weight = torch.outer(axes[0][1], axes[1][1]).reshape(-1).to(torch.float64)
    return u, v, weight


def phase_matrix(
    u: Tensor,
    v: Tensor,
    grid: tuple[int, int],
    taps: tuple[int, int],
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """DFT phases ``exp(-2 pi i (u a / P_h + v b / P_w))`` for each frequency and tap.

    Products are reduced modulo the grid in integers before scaling, so the angles stay
    in ``[0, 2 pi)`` and are accurate to the dtype's epsilon.

    Args:
        u: ``(F,)`` frequency indices along the height.
        v: ``(F,)`` along the width.
        grid: ``(P_h, P_w)``.
        taps: ``(k'_h, k'_w)``.
        dtype: Complex dtype of the result.
        device: Its device.

    Returns:
        ``(F, k'_h k'_w)`` complex phases.
    """
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    a = torch.arange(taps[0])
    b = torch.arange(taps[1])
    turns_h = ((u[:, None] * a[None, :]) % grid[0]).to(torch.float64) / grid[0]
    turns_w = ((v[:, None] * b[None, :]) % grid[1]).to(torch.float64) / grid[1]
    angle = -2.0 * math.pi * (turns_h[:, :, None] + turns_w[:, None, :])
    angle = angle.reshape(u.numel(), -1).to(device=device, dtype=real)
    return torch.polar(torch.ones_like(angle), angle).to(dtype)


def transfer_matrices(phases: Tensor, taps: Tensor) -> Tensor:
    """Transfer matrices at the given frequencies, batched over layers.

    Args:
        phases: ``(F, T)`` complex phases.
        taps: ``(L, T, g, p, q)`` real taps of ``L`` layers of one shape.

    Returns:
        ``(L, F, g, p, q)`` complex matrices.
    """
    layers, count, groups, p, q = taps.shape
    flat = taps.reshape(layers, count, groups * p * q).to(phases.dtype)
    return torch.matmul(phases, flat).reshape(layers, phases.shape[0], groups, p, q)


def tap_gram(taps: Tensor) -> Tensor:
    """Inner products of the taps per group: ``R[l, g, t, t'] = <W_t, W_t'>``.

    ``||A(u, v)||_F^2 = phi^T R conj(phi)`` with ``phi`` the frequency's phases: the
    Frobenius norm at every frequency without forming the transfer matrices.

    Args:
        taps: ``(L, T, g, p, q)`` real taps.

    Returns:
        ``(L, g, T, T)``.
    """
    return torch.einsum("ltgpq,lsgpq->lgts", taps, taps)


def frobenius_at(phases: Tensor, gram: Tensor) -> Tensor:
    """``||A(u, v)||_F`` at every frequency from the tap Gram.

    Args:
        phases: ``(F, T)`` complex phases.
        gram: ``(L, g, T, T)`` from [`tap_gram`][].

    Returns:
        ``(L, F, g)`` real norms.
    """
    weighted = torch.einsum("ft,lgts->lfgs", phases, gram.to(phases.dtype))
    squared = (weighted * phases.conj()[None, :, None, :]).sum(-1).real
    return squared.clamp_min(0).sqrt()


def operator_frobenius_sq(weight: Tensor, geometry: Geometry, mode: str) -> Tensor:
    """``||A||_F^2`` of the operator itself, for any padding and stride.

    ``||A||_F^2 = sum_(o, c) sum_(j, j', l, l') w[o,c,j,l] w[o,c,j',l'] M_h[j,j'] M_w[l,l']``
    with ``M[j, j']`` the number of output positions at which taps ``j`` and ``j'`` read
    the same input value (``M`` is diagonal for zero padding).

    Args:
        weight: ``(c_out, c_in / groups, k_h, k_w)`` in operator orientation.
        geometry: The operator's geometry.
        mode: Padding mode of the operator analysed.

    Returns:
        A scalar in ``weight``'s dtype and device.
    """
    counts = []
    for dim in range(2):
        n = geometry.in_size[dim]
        before, after = geometry.pads[dim]
        source = source_index(n, before, after, mode)
        start = geometry.stride[dim] * torch.arange(geometry.out_size[dim])
        offset = geometry.dilation[dim] * torch.arange(geometry.kernel[dim])
        reads = source[start[:, None] + offset[None, :]]  # (m, k)
        same = (reads[:, :, None] == reads[:, None, :]) & (reads[:, :, None] >= 0)
        counts.append(same.sum(0).to(device=weight.device, dtype=weight.dtype))
    inner = torch.einsum("ocjl,ocJL->jlJL", weight, weight)
    return torch.einsum("jlJL,jJ,lL->", inner, counts[0], counts[1])


# ---------------------------------------------------------------------- Gram iteration


@dataclass(frozen=True)
class GramOutcome:
    """Per-matrix outcome of [`gram_bounds`][].

    Attributes:
        upper: Certified upper bounds of ``sigma_1``, float64 ``(B,)``.
        lower: Certified lower bounds (up to rounding), float64 ``(B,)``.
        steps: Gram steps taken (0: settled by the Frobenius norm), int64 ``(B,)``.
    """

    upper: Tensor
    lower: Tensor
    steps: Tensor


def _squared_norm(matrices: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Sum of squared moduli over negative ``dims``, in float64 (real arithmetic: fast)."""
    if matrices.is_conj():
        matrices = matrices.conj()  # the same moduli, without materialising the conjugate
    real = torch.view_as_real(matrices) if matrices.is_complex() else matrices[..., None]
    norm: Tensor = torch.linalg.vector_norm(
        real, dim=(*(d - 1 for d in dims), -1), dtype=torch.float64
    )
    return norm.square()


def _rounding_margin(size: int, dtype: torch.dtype) -> float:
    # First-order allowance for rounding in the products and norms (relative); far
    # below any tolerance in float64 (about 1e-12 for size 640).
    return 1.0 + 16.0 * size * torch.finfo(dtype).eps


def gram_bounds(
    matrices: Tensor,
    threshold: Tensor,
    *,
    tol: float,
    max_steps: int,
    subspace: int = 8,
    direct_size: int = 32,
) -> GramOutcome:
    """Certified bracket of the largest singular value of each matrix in a batch.

    A matrix is settled when its upper bound is at most ``threshold`` (it cannot be
    the largest of its layer beyond the tolerance) or at most ``(1 + tol)`` times its
    own lower bound; the others take another Gram step. Settled matrices leave the
    batch (one host synchronisation per step, none per matrix).

    Args:
        matrices: ``(B, p, q)`` complex.
        threshold: ``(B,)`` float64; ``0`` settles only on the matrix's own bracket.
        tol: Relative width of the bracket to reach.
        max_steps: Gram steps before a Hermitian eigensolver (``eigvalsh``) settles the
            matrices still open (their bracket then closes to rounding); such matrices
            report ``max_steps + 1`` steps.
        subspace: Ritz vectors per matrix (interlacing deflation).
        direct_size: Gram matrices up to this size get all their eigenvalues at once
            (``eigvalsh``, exact to rounding) instead of iterating.

    Returns:
        The outcome, in the batch's order, on its device.
    """
    batch, p, q = matrices.shape
    device = matrices.device
    if q > p:  # the Gram matrix of the smaller side: same nonzero singular values
        matrices = matrices.mH
        p, q = q, p
    real = torch.float64
    margin = _rounding_margin(q, matrices.dtype)
    upper = torch.empty(batch, dtype=real, device=device)
    lower = torch.empty(batch, dtype=real, device=device)
    steps = torch.zeros(batch, dtype=torch.int64, device=device)
    threshold = threshold.to(device=device, dtype=real)

    # Step 0: sigma_1 <= ||A||_F and sigma_1 >= the largest column norm.
    columns = _squared_norm(matrices, (-2,)).sqrt()  # (B, q)
    fro = columns.square().sum(-1).sqrt()
    col_max = columns.amax(-1)
    settled = (fro * margin <= threshold) | (fro <= col_max * (1 + tol)) | (fro == 0)
    upper[:] = fro * margin
    lower[:] = col_max
    active = torch.nonzero(~settled).squeeze(-1)
    if active.numel() == 0:
        return GramOutcome(upper, lower, steps)

    a = matrices[active]
    gram = a.mH @ a
    del a
    if q <= direct_size:
        # Small Gram matrices: all eigenvalues at once costs about two Gram steps.
        top = torch.linalg.eigvalsh(gram)[:, -1].to(real).clamp_min(0).sqrt()
        upper[active] = top * margin
        lower[active] = torch.maximum(lower[active], top / margin)
        steps[active] = 1
        return GramOutcome(upper, lower, steps)
    scale = _squared_norm(gram, (-2, -1)).sqrt()
    h = gram / scale.to(gram.dtype)[:, None, None]
    del gram
    log_scale = scale.log()
    power = 2.0  # h's top eigenvalue times exp(log_scale) is sigma_1 ** power
    m = min(subspace, q)
    strongest = _squared_norm(h, (-2,)).topk(m, dim=-1).indices
    basis = torch.linalg.qr(torch.gather(h, 2, strongest[:, None, :].expand(-1, q, -1))).Q
    for step in range(1, max_steps + 1):
        basis = torch.linalg.qr(h @ basis).Q
        ritz = torch.linalg.eigvalsh(basis.mH @ (h @ basis)).to(real).clamp_min(0)
        top = ritz[:, -1]
        rest = (ritz[:, :-1] ** 2).sum(-1)
        fro_sq = _squared_norm(h, (-2, -1))
        top_bound = (fro_sq - rest).clamp_min(top**2).sqrt()
        up = torch.exp((top_bound.log() + log_scale) / power) * margin
        low = torch.exp((top.log() + log_scale) / power)
        upper[active] = up
        lower[active] = torch.maximum(lower[active], low)
        steps[active] = step
        done = (up <= threshold[active]) | (up <= lower[active] * (1 + tol))
        if bool(done.all()):
            break
        keep = torch.nonzero(~done).squeeze(-1)
        active, h, basis, log_scale = active[keep], h[keep], basis[keep], log_scale[keep]
        if step == max_steps:
            # Still open: the top eigenvalue of the current iterate from a Hermitian
            # eigensolver (float64; error below 1e-10 relative), which closes the bracket.
            top = torch.linalg.eigvalsh(h.to(torch.complex128))[:, -1].to(real)
            top = top.clamp_min(torch.finfo(real).tiny)
            exact = torch.exp((top.log() + log_scale) / power)
            eig_margin = _rounding_margin(q, torch.float64) * (1.0 + 16.0 * q**1.5 * 2.0**-52)
            upper[active] = exact * eig_margin
            lower[active] = torch.maximum(lower[active], exact / eig_margin)
            steps[active] = step + 1
            break
        h = h @ h
        norm = _squared_norm(h, (-2, -1)).sqrt()
        h = h / norm.to(h.dtype)[:, None, None]
        log_scale = 2.0 * log_scale + norm.log()
        power *= 2.0
    return GramOutcome(upper, lower, steps)


def chunks(total: int, size: int) -> Sequence[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(total)`` in pieces of ``size``."""
    size = max(1, size)
    return [(start, min(start + size, total)) for start in range(0, total, size)]


# ------------------------------------------------ Gram matrices from the kernel taps


def offset_grams(taps: Tensor, grid_taps: tuple[int, int]) -> tuple[Tensor, Tensor, int]:
    """Tap cross-products grouped by tap offset: the Gram matrices at every frequency.

    With ``B_t = W_t`` (``q <= p``) or ``B_t = W_t^T`` (``q > p``), the Gram matrix of the
    smaller side at frequency ``(u, v)`` is (up to complex conjugation, which keeps its
    eigenvalues)

        G(u, v) = sum_(t, s) conj(phi_t) phi_s B_t^T B_s = X + X^H,
        X = sum_(d in H) c_d psi_d R_d,  R_d = sum_(s - t = d) B_t^T B_s,

    with ``psi_d = exp(-2 pi i (u d_h / P_h + v d_w / P_w))``, ``H`` the offsets of a half
    plane (``R_(-d) = R_d^T``) and ``c_0 = 1/2``, ``c_d = 1`` otherwise. The ``R_d`` cost
    about ``(T^2 + T) / 2`` real products of the taps per layer, however many frequencies
    there are (``8 r^3`` real flops per frequency for ``A^H A`` itself).

    Args:
        taps: ``(L, T, g, p, q)`` real taps, ``T = k'_h k'_w``.
        grid_taps: ``(k'_h, k'_w)``.

    Returns:
        ``(offsets, R, inner)``: ``(D, 2)`` int64 offsets of ``H``, ``(L, g, D, r, r)``
        in the taps' dtype (``r = min(p, q)``), and the length of the inner products.
    """
    layers, count, groups, p, q = taps.shape
    kh, kw = grid_taps
    b = taps if q <= p else taps.transpose(-2, -1)  # (L, T, g, n, r)
    inner, r = b.shape[-2], b.shape[-1]
    offsets: list[tuple[int, int]] = []
    for dh in range(0, kh):
        for dw in range(-(kw - 1), kw):
            if dh > 0 or dw >= 0:
                offsets.append((dh, dw))
    index = {offset: i for i, offset in enumerate(offsets)}
    grams = taps.new_zeros(layers, groups, len(offsets), r, r)
    b = b.permute(0, 2, 1, 3, 4)  # (L, g, T, n, r)
    for t in range(count):
        at, bt = divmod(t, kw)
        partners = []
        slots = []
        for s in range(count):
            a_s, b_s = divmod(s, kw)
            slot = index.get((a_s - at, b_s - bt))
            if slot is not None:
                partners.append(s)
                slots.append(slot)
        if not partners:
            continue
        # B_t^T [B_s1 B_s2 ...]: one product per tap.
        right = b[:, :, partners].permute(0, 1, 3, 2, 4).reshape(layers, groups, inner, -1)
        product = b[:, :, t].transpose(-2, -1) @ right  # (L, g, r, len * r)
        product = product.reshape(layers, groups, r, len(partners), r).permute(0, 1, 3, 2, 4)
        grams[:, :, slots] += product
    return torch.tensor(offsets, dtype=torch.int64), grams, inner


def offset_phases(
    u: Tensor, v: Tensor, offsets: Tensor, grid: tuple[int, int], *, device: torch.device
) -> Tensor:
    """``c_d psi_d`` of [`offset_grams`][] as real ``(2, F, D)``: real and imaginary parts.

    Args:
        u: ``(F,)`` frequency indices along the height.
        v: ``(F,)`` along the width.
        offsets: ``(D, 2)`` tap offsets.
        grid: ``(P_h, P_w)``.
        device: Device of the result.

    Returns:
        ``(2, F, D)`` float64.
    """
    turns_h = ((u[:, None] * offsets[None, :, 0]) % grid[0]).to(torch.float64) / grid[0]
    turns_w = ((v[:, None] * offsets[None, :, 1]) % grid[1]).to(torch.float64) / grid[1]
    angle = -2.0 * math.pi * (turns_h + turns_w)
    scale = torch.ones(offsets.shape[0], dtype=torch.float64)
    scale[(offsets == 0).all(-1)] = 0.5
    trig = torch.stack([torch.cos(angle), torch.sin(angle)]) * scale
    return trig.to(device)


def grams_at(trig: Tensor, grams: Tensor) -> Tensor:
    """The Hermitian Gram matrices ``G = X + X^H`` at the given frequencies of one layer.

    Args:
        trig: ``(2, n, D)`` from [`offset_phases`][] (rows: the frequencies wanted).
        grams: ``(g, D, r, r)`` of one layer from [`offset_grams`][].

    Returns:
        ``(n, g, r, r)`` complex.
    """
    groups, count, r, _ = grams.shape
    flat = grams.permute(1, 0, 2, 3).reshape(count, -1).to(trig.dtype)
    x = (trig.reshape(-1, count) @ flat).reshape(2, -1, groups, r, r)
    return torch.complex(x[0] + x[0].mT, x[1] - x[1].mT).to(
        torch.complex128 if grams.dtype == torch.float64 else torch.complex64
    )


def gram_error(inner: int, count: int, offsets: int, squared_taps: Tensor) -> Tensor:
    """Bound of ``||G_computed - G||_2`` for [`grams_at`][] in float64.

    Every entry of ``G`` is a sum of at most ``T^2`` inner products of length ``inner``
    (then ``D`` phases): ``|dG| <= gamma_n sum_(t,s) |B_t|^T |B_s|`` with
    ``n = inner + T + D + 8``, so ``||dG||_2 <= 2 gamma_n T ||W||_F^2``.

    Args:
        inner: Length of the inner products.
        count: Taps ``T``.
        offsets: Offsets ``D``.
        squared_taps: ``||W||_F^2`` per item (float64).

    Returns:
        The bound per item (float64).
    """
    gamma = (inner + count + offsets + 8) * 2.0**-52
    return 2.0 * gamma * count * squared_taps * 1.01


def lanczos_lower(grams: Tensor, steps: int) -> Tensor:
    """Rayleigh quotients ``y^H G y / y^H y <= lambda_1(G)`` after Lanczos steps, batched.

    Lanczos with full reorthogonalisation from the Gram matrix's largest column; the
    top Ritz vector ``y`` is formed and its Rayleigh quotient evaluated directly, so the
    value is a lower bound of ``lambda_1`` whatever the orthogonality reached (up to
    rounding of one product, removed by the caller).

    Args:
        grams: ``(n, r, r)`` Hermitian positive semi-definite.
        steps: Krylov dimension (at most ``r``).

    Returns:
        ``(n,)`` float64 Rayleigh quotients (0 for a zero matrix).
    """
    n, r, _ = grams.shape
    steps = max(1, min(steps, r))
    column_norms = _squared_norm(grams, (-2,))
    start = torch.gather(grams, 2, column_norms.argmax(-1)[:, None, None].expand(-1, r, 1)).squeeze(
        -1
    )
    start = start + (column_norms.amax(-1) == 0).to(start.dtype)[:, None]  # a zero matrix
    v = start / torch.linalg.vector_norm(start, dim=-1, keepdim=True).to(start.dtype)
    basis = grams.new_zeros(n, steps, r)
    alpha = torch.zeros(n, steps, dtype=torch.float64, device=grams.device)
    beta = torch.zeros(n, steps, dtype=torch.float64, device=grams.device)
    for j in range(steps):
        basis[:, j] = v
        w = (grams @ v[:, :, None]).squeeze(-1)
        alpha[:, j] = (v.conj() * w).sum(-1).real.to(torch.float64)
        for _ in range(2):  # full reorthogonalisation, twice is enough
            coefficients = (basis[:, : j + 1].conj() @ w[:, :, None]).squeeze(-1)
            w = w - (basis[:, : j + 1].mT @ coefficients[:, :, None]).squeeze(-1)
        norm = torch.linalg.vector_norm(w, dim=-1).to(torch.float64)
        beta[:, j] = norm
        v = w / norm.clamp_min(torch.finfo(torch.float64).tiny).to(w.dtype)[:, None]
    tridiagonal = torch.diag_embed(alpha) + torch.diag_embed(beta[:, :-1], 1)
    tridiagonal = tridiagonal + torch.diag_embed(beta[:, :-1], -1)
    _, vectors = torch.linalg.eigh(tridiagonal)
    y = (basis.mT @ vectors[:, :, -1:].to(basis.dtype)).squeeze(-1)
    gy = (grams @ y[:, :, None]).squeeze(-1)
    numerator = (y.conj() * gy).sum(-1).real.to(torch.float64)
    denominator = _squared_norm(y, (-1,))
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), 0.0)


def certify_below(grams: Tensor, level: Tensor, error: Tensor) -> Tensor:
    """Whether ``lambda_1(G) <= level`` is proved by a Cholesky factorisation.

    ``level I - G`` is positive definite exactly when ``lambda_1(G) < level``; a
    Cholesky factorisation in floating point that succeeds on ``M = c I - G_computed``
    proves ``M + E`` positive semi-definite with ``||E||_2 <= gamma_(r+1) tr(M) / (1 -
    r gamma_(r+1))`` (Demmel 1989), so the shift is lowered by that and by ``error``
    (the bound of ``||G_computed - G||_2``): success certifies ``lambda_1(G) <= level``.
    One factorisation costs ``4 r^3 / 3`` real flops (a Gram squaring ``8 r^3``).

    Args:
        grams: ``(n, r, r)`` Hermitian, computed (complex128 for the bound to hold).
        level: ``(n,)`` float64 levels.
        error: ``(n,)`` float64 bounds of the error of ``grams``.

    Returns:
        ``(n,)`` bool: certified.
    """
    r = grams.shape[-1]
    eps = torch.finfo(torch.float64).eps
    cholesky_error = 4.0 * (r + 2) * eps * r * level
    shift = (level - error - cholesky_error) * (1 - 8 * eps)
    shifted = -grams
    shifted.diagonal(dim1=-2, dim2=-1).add_(shift.to(grams.dtype)[:, None])
    info: Tensor = torch.linalg.cholesky_ex(shifted).info
    certified: Tensor = (info == 0) & (shift > 0)
    return certified


def top_eigenvalue(grams: Tensor, error: Tensor) -> tuple[Tensor, Tensor]:
    """``lambda_1(G)`` from a Hermitian eigensolver, bracketed for rounding.

    Args:
        grams: ``(n, r, r)`` Hermitian (complex128).
        error: ``(n,)`` float64 bounds of the error of ``grams``.

    Returns:
        ``(lower, upper)`` float64 bounds of ``lambda_1`` of the exact matrices.
    """
    r = grams.shape[-1]
    top = torch.linalg.eigvalsh(grams)[:, -1].to(torch.float64)
    norm = _squared_norm(grams, (-2, -1)).sqrt()
    slack = 16.0 * r * torch.finfo(torch.float64).eps * norm + error
    return (top - slack).clamp_min(0), top + slack
