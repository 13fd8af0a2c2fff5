r"""Distributions of kernels: PCA basis, the paper's distribution shift, first-layer response.

Gavrikov & Keuper (CVPR-W 2022), following the CNN Filter DB (Gavrikov & Keuper,
CVPR 2022, arXiv:2203.15331):

* **PCA basis.** Each ``k x k`` kernel is divided by its own largest |value| (0 stays
  0), sparse kernels (``max|f| <= eps * max|W|`` of their layer) are dropped, and the
  principal components of the rest give the basis filters and their explained-variance
  ratios (EVR), per model or pooled over a group.
* **Distribution shift.** Both groups' scaled kernels are projected on one shared
  basis (fitted on both groups, each model once). For each component a histogram with
  ``bins`` (70) equal bins over one shared range (the smallest and largest coefficient
  of all kernels of both groups, sparse ones included) of the non-sparse kernels gives
  a density; empty bins are set to float32 eps and the density renormalised to sum 1.
  Then :math:`D = \sum_i \mathrm{EVR}_i \,[\mathrm{KL}(p_i\|q_i) + \mathrm{KL}(q_i\|p_i)]`
  (natural log), per depth bin.

Differences from the paper's code: a depth bin where one group has no kernel is NaN
(the paper silently set its ImageNet first-layer bin to 0, its bug 3); the default
range covers the compared models (the paper used its whole database, bug 7), so
absolute values depend on what is compared: pass ``value_range`` to fix it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from filterstats import kernels
from filterstats._modes import eval_mode
from filterstats._tables import RowTable
from filterstats._text import fmt, render_table
from filterstats.depth_bins import assign_depth_bins, depth_bin_labels
from filterstats.layers import ConvLayer, FilterSet
from filterstats.resolve import extract_filters, runnable_module

__all__ = [
    "FLOAT32_EPS",
    "DivergenceByDepth",
    "DivergenceRow",
    "FirstLayerResponse",
    "PCABasis",
    "filter_coefficients",
    "filter_divergence",
    "first_layer_response",
    "histogram_divergence",
    "pca_basis",
    "scaled_kernels",
]

#: Floor of empty histogram bins (the paper's ``np.finfo(np.float32).eps``).
FLOAT32_EPS = float(np.finfo(np.float32).eps)

ALL_DEPTHS = "all"


# ------------------------------------------------------------------------- inputs


def _as_filtersets(x: Any, argument: str, kernel_size: tuple[int, ...]) -> list[FilterSet]:
    """One ``FilterSet`` per item, each through the one resolver (same object: once)."""
    items = list(x) if isinstance(x, (list, tuple)) else [x]
    if not items:
        raise ValueError(f"`{argument}` is empty: pass a model, a FilterSet or a list of them.")
    cache: dict[int, FilterSet] = {}  # the same object listed twice is extracted once
    result = []
    for i, item in enumerate(items):
        if id(item) not in cache:
            name = f"{argument}[{i}]" if len(items) > 1 else argument
            cache[id(item)] = extract_filters(item, kernel_size=kernel_size, argument=name)
        result.append(cache[id(item)])
    return result


def _unique(sets: Sequence[FilterSet]) -> list[FilterSet]:
    return list({id(s): s for s in sets}.values())


def _layer_kernels(layer: ConvLayer, eps: float) -> tuple[Tensor, Tensor]:
    """Scaled kernels ``(N, K)`` float64 (finite rows only) and their non-sparse mask."""
    rows = layer.kernel_matrix.detach().to(torch.float64)
    rows = rows[torch.isfinite(rows).all(dim=1)]
    kernel_max = kernels.kernel_maxabs(rows)
    top = kernel_max.amax() if rows.shape[0] else kernel_max.new_zeros(())
    nonsparse = (kernel_max > eps * top) & (top > 0)
    scaled = rows / torch.where(kernel_max > 0, kernel_max, 1.0)[:, None]
    return scaled, nonsparse


def _check_eps(eps: float) -> float:
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"`eps` must lie in [0, 1), got {eps!r}; the paper uses 0.01.")
    return float(eps)


def scaled_kernels(
    x: Any,
    *,
    eps: float = 0.01,
    drop_sparse: bool = True,
    kernel_size: tuple[int, ...] = (3, 3),
) -> Tensor:
    """All kernels of a model (or group), each divided by its own largest |value|.

    Args:
        x: A model, a [`FilterSet`][filterstats.FilterSet], or a list of them.
        eps: Sparsity threshold, fraction of each layer's largest |weight|.
        drop_sparse: Leave out sparse kernels (the paper's PCA input).
        kernel_size: Kernel size to select.

    Returns:
        ``(N, kH * kW)`` float64 on the weights' device; rows with NaN/inf are left out.
    """
    eps = _check_eps(eps)
    blocks = []
    for filterset in _as_filtersets(x, "x", kernel_size):
        for layer in filterset:
            scaled, nonsparse = _layer_kernels(layer, eps)
            blocks.append(scaled[nonsparse] if drop_sparse else scaled)
    if not blocks:
        return torch.zeros(0, math.prod(kernel_size), dtype=torch.float64)
    return torch.cat([b.to(blocks[0].device) for b in blocks])


# --------------------------------------------------------------------------- PCA


@dataclass(frozen=True, eq=False)
class PCABasis:
    """Principal components of scaled kernels.

    Attributes:
        components: ``(K, K)`` basis filters as rows (unit norm), by decreasing
            variance; each sign fixed so its largest-|value| entry is positive.
        mean: ``(K,)`` mean kernel that projections subtract.
        explained_variance: ``(K,)`` variances (denominator ``n - 1``).
        explained_variance_ratio: ``(K,)`` EVR, summing to 1.
        n_filters: Kernels fitted.
        kernel_size: Spatial size, e.g. ``(3, 3)``.
        label: What was fitted (model or group label).
    """

    components: Tensor
    mean: Tensor
    explained_variance: Tensor
    explained_variance_ratio: Tensor
    n_filters: int
    kernel_size: tuple[int, ...]
    label: str = ""

    @property
    def cumulative(self) -> Tensor:
        """``(K,)`` cumulative explained-variance ratio."""
        return torch.cumsum(self.explained_variance_ratio, 0)

    @property
    def basis_filters(self) -> Tensor:
        """``(K, kH, kW)``: the components as filters."""
        return self.components.reshape(-1, *self.kernel_size)

    def transform(self, kernels_: Tensor) -> Tensor:
        """Coefficients of kernels on the basis.

        Args:
            kernels_: ``(N, K)`` scaled kernels.

        Returns:
            ``(N, K)`` float64 coefficients ``(x - mean) @ components.T``.
        """
        rows = kernels_.to(torch.float64)
        return (rows - self.mean.to(rows.device)) @ self.components.to(rows.device).T

    def __repr__(self) -> str:
        evr = " ".join(f"{v:.4f}" for v in self.explained_variance_ratio.tolist())
        return f"PCABasis({self.label or 'kernels'}: {self.n_filters:,} kernels; EVR {evr})"


def _fit_basis(
    count: Tensor, total: Tensor, outer: Tensor, kernel_size: tuple[int, ...], label: str
) -> PCABasis:
    n = float(count)
    if n < 2:
        raise ValueError(
            f"PCA needs at least two non-sparse kernels, got {n:.0f} ({label or 'input'}); "
            "check `eps` and `kernel_size`."
        )
    mean = total / n
    scatter = outer - torch.outer(total, total) / n
    covariance = 0.5 * (scatter + scatter.T) / (n - 1)
    # SVD of the symmetric PSD covariance: singular values are its eigenvalues, sorted.
    left, variance, _ = torch.linalg.svd(covariance)
    variance = variance.clamp_min(0.0)
    components = left.T.clone()
    top = components.abs().argmax(dim=1)
    signs = torch.sign(components[torch.arange(components.shape[0]), top])
    components = components * torch.where(signs == 0, 1.0, signs)[:, None]
    ratio = variance / variance.sum() if float(variance.sum()) > 0 else variance
    return PCABasis(
        components=components.cpu(),
        mean=mean.cpu(),
        explained_variance=variance.cpu(),
        explained_variance_ratio=ratio.cpu(),
        n_filters=int(n),
        kernel_size=tuple(kernel_size),
        label=label,
    )


def pca_basis(
    x: Any,
    *,
    eps: float = 0.01,
    kernel_size: tuple[int, ...] = (3, 3),
    label: str = "",
) -> PCABasis:
    """PCA basis of the scaled, non-sparse kernels of a model or a pooled group.

    Matches ``sklearn.decomposition.PCA`` fitted on the same rows (up to the sign of
    each component), without sklearn: one pass accumulates the mean and covariance in
    float64, then an SVD of the ``K x K`` covariance.

    Args:
        x: A model, a [`FilterSet`][filterstats.FilterSet], a ``(N, K)`` tensor of
            kernels (used as given), or a list of models/FilterSets (pooled; an
            object listed twice counts once).
        eps: Sparsity threshold for dropping kernels.
        kernel_size: Kernel size to select.
        label: Stored in the result.

    Returns:
        A [`PCABasis`][filterstats.distribution.PCABasis].

    Examples:
        >>> import torch, filterstats as fs
        >>> basis = fs.pca_basis(torch.nn.Conv2d(16, 32, 3))
        >>> basis.components.shape, round(float(basis.explained_variance_ratio.sum()), 6)
        (torch.Size([9, 9]), 1.0)
    """
    if isinstance(x, Tensor):
        if x.ndim != 2:
            raise ValueError(
                f"`x` as a tensor must be kernels as rows (N, kH * kW), got shape "
                f"{tuple(x.shape)}; pass the model or FilterSet for 4-D weights."
            )
        count, total, outer = kernels.kernel_moments(x.detach())
        side = math.isqrt(x.shape[1])
        size = (side, side) if side * side == x.shape[1] else (x.shape[1],)
        return _fit_basis(count, total, outer, size, label)
    eps = _check_eps(eps)
    sets = _unique(_as_filtersets(x, "x", kernel_size))
    count, total, outer = _moments(sets, eps, math.prod(kernel_size))
    return _fit_basis(count, total, outer, kernel_size, label)


def _moments(sets: Sequence[FilterSet], eps: float, width: int) -> tuple[Tensor, Tensor, Tensor]:
    count = torch.zeros((), dtype=torch.float64)
    total = torch.zeros(width, dtype=torch.float64)
    outer = torch.zeros(width, width, dtype=torch.float64)
    for filterset in sets:
        for layer in filterset:
            scaled, nonsparse = _layer_kernels(layer, eps)
            if scaled.shape[1] != width:
                continue
            n, s, q = kernels.kernel_moments(scaled, weights=nonsparse.to(torch.float64))
            count, total, outer = count + n.cpu(), total + s.cpu(), outer + q.cpu()
    return count, total, outer


def filter_coefficients(
    x: Any, basis: PCABasis, *, eps: float = 0.01, drop_sparse: bool = True
) -> Tensor:
    """Coefficients of a model's (or group's) scaled kernels on a basis (for ridge plots).

    Args:
        x: A model, a [`FilterSet`][filterstats.FilterSet] or a list of them.
        basis: The basis to project on.
        eps: Sparsity threshold.
        drop_sparse: Leave out sparse kernels (as the paper's histograms do).

    Returns:
        ``(N, K)`` float64 coefficients.
    """
    rows = scaled_kernels(x, eps=eps, drop_sparse=drop_sparse, kernel_size=basis.kernel_size)
    return basis.transform(rows)


# --------------------------------------------------------------------- divergence


def _edges(value_range: tuple[float, float], bins: int) -> np.ndarray:
    low, high = float(value_range[0]), float(value_range[1])
    if low == high:  # numpy widens a degenerate range the same way
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, bins + 1)


def _histogram_counts(coefficients: Tensor, edges: np.ndarray) -> Tensor:
    """Per-column counts ``(K, bins)`` exactly as ``numpy.histogram`` bins them.

    Bin ``i`` holds ``edges[i] <= x < edges[i + 1]``; the last bin also holds the upper
    edge; values outside are not counted.
    """
    bins = len(edges) - 1
    edge = torch.as_tensor(edges, dtype=torch.float64, device=coefficients.device)
    values = coefficients.to(torch.float64)
    inside = (values >= edge[0]) & (values <= edge[-1])
    index = (torch.bucketize(values, edge, right=True) - 1).clamp(0, bins - 1)
    width = values.shape[1]
    flat = (index + torch.arange(width, device=values.device) * bins)[inside]
    return torch.bincount(flat, minlength=width * bins).reshape(width, bins).cpu()


def _probabilities(counts: np.ndarray, edges: np.ndarray, floor: float) -> np.ndarray:
    """Density per row (``numpy.histogram(density=True)``), zeros floored, renormalised."""
    widths = np.diff(edges)
    totals = counts.sum(axis=1, keepdims=True)
    density = counts / np.where(totals > 0, totals, 1) / widths
    density = np.where(density == 0, floor, density)
    return np.asarray(density / density.sum(axis=1, keepdims=True), dtype=np.float64)


def _symmetric_kl(p: np.ndarray, q: np.ndarray, weights: np.ndarray) -> float:
    kl_pq = np.sum(p * np.log(p / q), axis=1)
    kl_qp = np.sum(q * np.log(q / p), axis=1)
    return float(np.sum(weights * (kl_pq + kl_qp)))


def histogram_divergence(
    coefficients_a: Tensor | np.ndarray,
    coefficients_b: Tensor | np.ndarray,
    weights: Tensor | np.ndarray,
    *,
    bins: int = 70,
    value_range: tuple[float, float] | None = None,
    floor: float = FLOAT32_EPS,
) -> float:
    r"""EVR-weighted symmetric KL divergence between two sets of coefficients.

    :math:`D = \sum_i w_i [\mathrm{KL}(p_i \| q_i) + \mathrm{KL}(q_i \| p_i)]`, with
    :math:`p_i, q_i` the histograms of column ``i`` (``bins`` equal bins over
    ``value_range``, density, zeros set to ``floor``, renormalised to sum 1).

    Args:
        coefficients_a: ``(N, K)`` coefficients of group a.
        coefficients_b: ``(M, K)`` coefficients of group b.
        weights: ``(K,)`` weights (the paper: EVR of the shared basis).
        bins: Histogram bins per component.
        value_range: ``(low, high)`` shared by all components; default: the smallest
            and largest value of both inputs.
        floor: Value given to empty bins before renormalising.

    Returns:
        D in nats, >= 0; NaN when either input has no row.
    """
    a = torch.as_tensor(coefficients_a, dtype=torch.float64)
    b = torch.as_tensor(coefficients_b, dtype=torch.float64)
    w = np.asarray(torch.as_tensor(weights, dtype=torch.float64).cpu())
    _check_hist(bins, floor)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or w.shape != (a.shape[1],):
        raise ValueError(
            f"coefficients must be (N, K) and (M, K) with weights (K,), got "
            f"{tuple(a.shape)}, {tuple(b.shape)} and {w.shape}."
        )
    if a.shape[0] == 0 or b.shape[0] == 0:
        return math.nan
    if value_range is None:
        both = torch.cat([a.reshape(-1), b.reshape(-1).to(a.device)])
        value_range = (float(both.min()), float(both.max()))
    edges = _edges(value_range, bins)
    p = _probabilities(_histogram_counts(a, edges).numpy(), edges, floor)
    q = _probabilities(_histogram_counts(b, edges).numpy(), edges, floor)
    return _symmetric_kl(p, q, w)


def _check_hist(bins: int, floor: float) -> None:
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"`bins` must be a positive integer, got {bins!r}; the paper uses 70.")
    if not floor > 0:
        raise ValueError(f"`floor` must be positive, got {floor!r}; the paper uses float32 eps.")


@dataclass(frozen=True)
class DivergenceRow:
    """Distribution shift in one depth bin.

    Attributes:
        bin: Depth bin label, or ``"all"`` for every depth pooled.
        n_a: Non-sparse kernels of group a in the bin (a shared model counted as
            often as it is listed under ``twins="per_pair"``).
        n_b: The same for group b.
        divergence: D in nats; NaN when a group has no kernel in the bin.
    """

    bin: str
    n_a: int
    n_b: int
    divergence: float


@dataclass(frozen=True, eq=False, repr=False)
class DivergenceByDepth(RowTable):
    """The paper's distribution shift per depth bin; prints as a table.

    Attributes:
        rows: One [`DivergenceRow`][filterstats.distribution.DivergenceRow] per depth
            bin in depth order, then ``"all"``.
        labels: Group labels ``(a, b)``.
        basis: The shared basis (its EVR are the weights).
        value_range: Histogram range shared by all components and bins.
        bins: Histogram bins.
        floor: Floor of empty bins.
        twins: ``"per_pair"`` or ``"unique"``.
    """

    rows: tuple[DivergenceRow, ...]
    labels: tuple[str, str]
    basis: PCABasis
    value_range: tuple[float, float]
    bins: int
    floor: float
    twins: str
    _row_type = DivergenceRow

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[DivergenceRow]:
        return iter(self.rows)

    def __getitem__(self, key: int | str) -> DivergenceRow:
        if isinstance(key, str):
            for row in self.rows:
                if row.bin == key:
                    return row
            raise KeyError(f"no depth bin {key!r}; have {[r.bin for r in self.rows]}")
        return self.rows[key]

    @property
    def by_depth(self) -> tuple[DivergenceRow, ...]:
        """The depth-bin rows (without ``"all"``)."""
        return tuple(r for r in self.rows if r.bin != ALL_DEPTHS)

    def __repr__(self) -> str:
        a, b = self.labels
        lines = [[r.bin, str(r.n_a), str(r.n_b), fmt(r.divergence)] for r in self.rows]
        title = (
            f"Distribution shift {a} vs {b}: EVR-weighted symmetric KL, {self.bins} bins over "
            f"[{self.value_range[0]:.4g}, {self.value_range[1]:.4g}], twins {self.twins}"
        )
        return render_table(title, ["bin", f"kernels {a}", f"kernels {b}", "D"], lines)


def _layer_bins(filterset: FilterSet, options: dict[str, Any]) -> list[str | None]:
    return assign_depth_bins(
        [-1 if layer.conv_depth is None else layer.conv_depth for layer in filterset],
        [math.nan if layer.conv_depth_norm is None else layer.conv_depth_norm
         for layer in filterset],
        **options,
    )  # fmt: skip


def filter_divergence(
    a: Any,
    b: Any,
    *,
    labels: tuple[str, str] = ("robust", "normal"),
    basis: PCABasis | None = None,
    bins: int = 70,
    value_range: tuple[float, float] | None = None,
    floor: float = FLOAT32_EPS,
    depth_bins: int = 10,
    first_bin: bool = True,
    include_lowest: bool = False,
    eps: float = 0.01,
    twins: Literal["per_pair", "unique"] = "per_pair",
    kernel_size: tuple[int, ...] = (3, 3),
) -> DivergenceByDepth:
    """The paper's kernel-distribution shift between two groups, per depth bin.

    Args:
        a: Model, [`FilterSet`][filterstats.FilterSet] or list of them (group a).
        b: The same for group b. A model listed several times (a twin shared by
            several pairs) counts that often under ``twins="per_pair"`` (the paper).
        labels: Names of the groups.
        basis: Shared basis; default: PCA of the non-sparse scaled kernels of both
            groups, each model once (the paper's ``full`` basis).
        bins: Histogram bins per component (70).
        value_range: Histogram range shared by all components and depth bins;
            default: smallest and largest coefficient of all kernels of both groups,
            sparse ones included.
        floor: Value of empty histogram bins before renormalising (float32 eps).
        depth_bins: Number of normalised-depth bins (10: deciles).
        first_bin: Give the first conv depth its own bin.
        include_lowest: Close the lowest depth bin on the left (CNN Filter DB).
        eps: Sparsity threshold (sparse kernels are left out of the histograms).
        twins: ``"per_pair"`` or ``"unique"`` (each model once).
        kernel_size: Kernel size to select.

    Returns:
        A [`DivergenceByDepth`][filterstats.distribution.DivergenceByDepth]: one row per
        depth bin (NaN where a group has no kernel) and one for all depths.
    """
    eps = _check_eps(eps)
    _check_hist(bins, floor)
    if twins not in ("per_pair", "unique"):
        raise ValueError(f"`twins` must be 'per_pair' or 'unique', got {twins!r}.")
    sets_a = _as_filtersets(a, "a", kernel_size)
    sets_b = _as_filtersets(b, "b", kernel_size)
    if twins == "unique":
        sets_a, sets_b = _unique(sets_a), _unique(sets_b)
    everything = _unique(sets_a + sets_b)
    width = math.prod(kernel_size)
    if basis is None:
        count, total, outer = _moments(everything, eps, width)
        basis = _fit_basis(count, total, outer, kernel_size, "+".join(labels))
    options = {"bins": depth_bins, "first_bin": first_bin, "include_lowest": include_lowest}
    labels_depth = depth_bin_labels(depth_bins, first_bin=first_bin, include_lowest=include_lowest)

    def projected(filterset: FilterSet) -> Iterator[tuple[str | None, Tensor, Tensor]]:
        for layer, label in zip(filterset, _layer_bins(filterset, options)):
            scaled, nonsparse = _layer_kernels(layer, eps)
            if scaled.shape[1] == width:
                yield label, basis.transform(scaled), nonsparse

    if value_range is None:
        low, high = math.inf, -math.inf
        for filterset in everything:
            for _, coefficients, _ in projected(filterset):
                if coefficients.numel():
                    low = min(low, float(coefficients.min()))
                    high = max(high, float(coefficients.max()))
        if not math.isfinite(low):
            raise ValueError(f"no {kernel_size} kernels in either group: nothing to compare.")
        value_range = (low, high)
    edges = _edges(value_range, bins)
    # Histogram counts per model and depth bin; duplicated models reuse them.
    counts: dict[int, dict[str, np.ndarray]] = {}
    for filterset in everything:
        per_bin: dict[str, np.ndarray] = {}
        for label, coefficients, nonsparse in projected(filterset):
            hist = _histogram_counts(coefficients[nonsparse], edges).numpy()
            for key in (label, ALL_DEPTHS) if label is not None else (ALL_DEPTHS,):
                per_bin[key] = per_bin.get(key, 0) + hist
        counts[id(filterset)] = per_bin
    weights = basis.explained_variance_ratio.numpy()
    rows = []
    for label in (*labels_depth, ALL_DEPTHS):
        hist_a = np.zeros((width, bins))
        hist_b = np.zeros((width, bins))
        for s in sets_a:
            hist_a = hist_a + counts[id(s)].get(label, 0)
        for s in sets_b:
            hist_b = hist_b + counts[id(s)].get(label, 0)
        n_a, n_b = int(hist_a[0].sum()), int(hist_b[0].sum())
        if n_a == 0 or n_b == 0:
            value = math.nan
        else:
            p = _probabilities(hist_a, edges, floor)
            q = _probabilities(hist_b, edges, floor)
            value = _symmetric_kl(p, q, weights)
        rows.append(DivergenceRow(label, n_a, n_b, value))
    return DivergenceByDepth(
        rows=tuple(rows),
        labels=(str(labels[0]), str(labels[1])),
        basis=basis,
        value_range=(float(value_range[0]), float(value_range[1])),
        bins=bins,
        floor=floor,
        twins=twins,
    )


# ------------------------------------------------------------- first-layer response


@dataclass(frozen=True, eq=False)
class FirstLayerResponse:
    """Output of the first convolution for an input and its perturbed version.

    Attributes:
        layer: Module path of the convolution.
        clean: ``(N, C_out, H, W)`` response to the input (after ``activation``).
        perturbed: ``(N, C_out, H, W)`` response to the perturbed input.
        difference: ``perturbed - clean``.
        activation: ``"relu"`` or ``"none"``.
    """

    layer: str
    clean: Tensor
    perturbed: Tensor
    difference: Tensor
    activation: str


class _ReachedLayerError(Exception):
    """Raised by the capturing hook: nothing after the first convolution runs."""


def _find_module(model: nn.Module, name: str) -> nn.Module:
    modules: dict[str, nn.Module] = dict(model.named_modules())
    for candidate in (name, f"module.{name}", f"_orig_mod.{name}", f"_orig_mod.module.{name}"):
        if candidate in modules:
            return modules[candidate]
    raise ValueError(f"no module named {name!r} in the model.")


def first_layer_response(
    model: nn.Module | str,
    x: Tensor,
    x_perturbed: Tensor,
    *,
    layer: str | None = None,
    activation: Literal["relu", "none"] = "relu",
) -> FirstLayerResponse:
    """Response of the first convolution to an input and to its perturbation.

    The paper's first-layer figure: the (ReLU of the) first convolution's output for
    an image and for its adversarially perturbed version, and their difference. The
    model runs up to that convolution only (a temporary hook stops it there), in eval
    mode and without gradients; hooks and training flags are restored afterwards, so
    the model is left exactly as it was.

    Args:
        model: The model.
        x: Input ``(C, H, W)`` or ``(N, C, H, W)``, as the model expects it.
        x_perturbed: Perturbed input, same shape.
        layer: Module path of the convolution; default: the first conv depth's first
            convolution (any kernel size).
        activation: ``"relu"`` (the paper) or ``"none"``.

    Returns:
        A [`FirstLayerResponse`][filterstats.distribution.FirstLayerResponse] on CPU.
    """
    if activation not in ("relu", "none"):
        raise ValueError(f"`activation` must be 'relu' or 'none', got {activation!r}.")
    if tuple(x.shape) != tuple(x_perturbed.shape):
        raise ValueError(
            f"`x` and `x_perturbed` must have the same shape, got {tuple(x.shape)} and "
            f"{tuple(x_perturbed.shape)}."
        )
    if x.ndim not in (3, 4):
        raise ValueError(f"`x` must be (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}.")
    model = runnable_module(model)
    if layer is None:
        filters = extract_filters(model, kernel_size=None)
        if not len(filters):
            raise ValueError("the model has no convolution.")
        depths = [c.conv_depth if c.conv_depth is not None else math.inf for c in filters]
        layer = filters[depths.index(min(depths))].name
    module = _find_module(model, layer)
    parameter = next(module.parameters(), None)
    outputs: list[Tensor] = []

    def capture(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
        outputs.append(output.detach())
        raise _ReachedLayerError

    handle = module.register_forward_hook(capture)
    try:
        with torch.no_grad(), eval_mode(model):
            for batch in (x, x_perturbed):
                batch = batch if batch.ndim == 4 else batch.unsqueeze(0)
                if parameter is not None:
                    batch = batch.to(device=parameter.device, dtype=parameter.dtype)
                try:
                    model(batch)
                except _ReachedLayerError:
                    continue
                raise ValueError(f"the forward pass never reached layer {layer!r}.")
    finally:
        handle.remove()
    clean, perturbed = (o.float().cpu() for o in outputs)
    if activation == "relu":
        clean, perturbed = clean.clamp_min(0), perturbed.clamp_min(0)
    return FirstLayerResponse(layer, clean, perturbed, perturbed - clean, activation)
