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

import dataclasses
import itertools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from filterstats import kernels
from filterstats._divergence_null import (
    batch_divergence,
    kernel_null,
    label_permutations,
    permutation_p,
)
from filterstats._modes import eval_mode
from filterstats._tables import RowTable, html_table
from filterstats._text import fmt, plural, render_table
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

_T = TypeVar("_T")


# ------------------------------------------------------------------------- inputs


def _as_filtersets(x: Any, argument: str, kernel_size: tuple[int, ...]) -> list[FilterSet]:
    """One ``FilterSet`` per item, each through the one resolver (same object: once)."""
    return [source.load() for source in _sources(x, argument, kernel_size)]


@dataclass(frozen=True, eq=False)
class _Source:
    """One listed model: resolved now (held by the caller anyway) or on each use.

    A path or spec string is resolved each time it is used and dropped afterwards,
    so functions that stream over a list of specs hold one model at a time.
    """

    key: tuple[str, Any]
    item: Any
    argument: str
    kernel_size: tuple[int, ...]
    filters: FilterSet | None

    def load(self) -> FilterSet:
        if self.filters is not None:
            return self.filters
        return extract_filters(self.item, kernel_size=self.kernel_size, argument=self.argument)


def _sources(x: Any, argument: str, kernel_size: tuple[int, ...]) -> list[_Source]:
    """The listed models of ``x``: specs/paths lazily, anything else resolved once."""
    items = list(x) if isinstance(x, (list, tuple)) else [x]
    if not items:
        raise ValueError(
            f"`{argument}` is empty: pass a model, a FilterSet, a spec or path, or a list of them."
        )
    cache: dict[tuple[str, Any], _Source] = {}  # the same model listed twice: one source
    result = []
    for i, item in enumerate(items):
        name = f"{argument}[{i}]" if len(items) > 1 else argument
        lazy = isinstance(item, (str, os.PathLike))
        key = ("spec", os.fspath(item)) if lazy else ("object", id(item))
        if key not in cache:
            filters = (
                None if lazy else extract_filters(item, kernel_size=kernel_size, argument=name)
            )
            cache[key] = _Source(key, item, name, kernel_size, filters)
        result.append(cache[key])
    return result


def _unique(sets: Sequence[_T]) -> list[_T]:
    return list({id(s): s for s in sets}.values())


#: Kernels scaled and projected at once in the streaming passes (bounds memory).
_CHUNK_ROWS = 1 << 16


def _layer_rows(layer: ConvLayer, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """A layer's finite kernels as rows (its dtype), their divisors and non-sparse mask.

    Returns:
        ``rows (N, K)``, ``divisor (N,)`` float64 (each kernel's largest |value|, 1
        for an all-zero kernel) and ``nonsparse (N,)`` bool.
    """
    rows = layer.kernel_matrix.detach()
    finite = torch.isfinite(rows).all(dim=1)
    if not bool(finite.all()):
        rows = rows[finite]
    kernel_max = kernels.kernel_maxabs(rows).to(torch.float64)  # exact in any precision
    top = kernel_max.amax() if rows.shape[0] else kernel_max.new_zeros(())
    nonsparse = (kernel_max > eps * top) & (top > 0)
    divisor = torch.where(kernel_max > 0, kernel_max, 1.0)
    return rows, divisor, nonsparse


def _scaled_chunks(layer: ConvLayer, eps: float) -> Iterator[tuple[Tensor, Tensor]]:
    """The scaled kernels of a layer (float64) and their non-sparse mask, in chunks."""
    rows, divisor, nonsparse = _layer_rows(layer, eps)
    for start in range(0, rows.shape[0], _CHUNK_ROWS):
        stop = start + _CHUNK_ROWS
        scaled = rows[start:stop].to(torch.float64) / divisor[start:stop, None]
        yield scaled, nonsparse[start:stop]


def _layer_kernels(layer: ConvLayer, eps: float) -> tuple[Tensor, Tensor]:
    """Scaled kernels ``(N, K)`` float64 (finite rows only) and their non-sparse mask."""
    rows, divisor, nonsparse = _layer_rows(layer, eps)
    return rows.to(torch.float64) / divisor[:, None], nonsparse


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
        x: A model, a [`FilterSet`][filterstats.FilterSet], a spec or path, a
            ``(N, K)`` tensor of kernels (used as given), or a list of them (pooled;
            an object or spec listed twice counts once). Specs and paths are loaded
            one at a time and dropped after use: only the ``K x K`` moments are kept,
            so a list of specs never holds more than one model.
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
    sources = _unique(_sources(x, "x", kernel_size))
    count, total, outer = _moments(sources, eps, math.prod(kernel_size))
    return _fit_basis(count, total, outer, kernel_size, label)


def _moments(sources: Sequence[_Source], eps: float, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Count, sum and outer products of the non-sparse scaled kernels (float64, CPU).

    One model at a time: each source is loaded, summed and dropped.
    """
    count = torch.zeros((), dtype=torch.float64)
    total = torch.zeros(width, dtype=torch.float64)
    outer = torch.zeros(width, width, dtype=torch.float64)
    for source in sources:  # one model at a time: nothing of it outlives the call
        n, s, q = _model_moments(source.load(), eps, width)
        count, total, outer = count + n, total + s, outer + q
    return count, total, outer


def _model_moments(filterset: FilterSet, eps: float, width: int) -> tuple[Tensor, Tensor, Tensor]:
    count = torch.zeros((), dtype=torch.float64)
    total = torch.zeros(width, dtype=torch.float64)
    outer = torch.zeros(width, width, dtype=torch.float64)
    for layer in filterset:
        if math.prod(layer.kernel_size) != width:
            continue
        rows, divisor, nonsparse = _layer_rows(layer, eps)
        # Chunked inside: the scaled kernels are never held whole.
        n, s, q = kernels.kernel_moments(rows, weights=nonsparse.to(torch.float64), scale=divisor)
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
    edge; values outside are not counted. As numpy does for equal bins: the bin from
    ``(x - low) * bins / (high - low)``, then moved by one where the edges disagree
    (several times faster than a binary search over the edges).
    """
    bins = len(edges) - 1
    edge = torch.as_tensor(edges, dtype=torch.float64, device=coefficients.device)
    values = coefficients.to(torch.float64)
    low, high = float(edges[0]), float(edges[-1])
    width = values.shape[1]
    # Truncation is the floor for x >= low; anything below is outside and clamped.
    index = ((values - low) * (bins / (high - low))).long().clamp_(0, bins - 1)
    index -= (values < torch.take(edge, index)).long()
    index.clamp_(0, bins - 1)
    index += ((values >= torch.take(edge, index + 1)) & (index != bins - 1)).long()
    # Values outside the range go to one extra bin, dropped after counting.
    outside = (values < low) | (values > high)
    flat = index + torch.arange(width, device=values.device) * bins
    flat.masked_fill_(outside, width * bins)
    counts = torch.bincount(flat.reshape(-1), minlength=width * bins + 1)
    return counts[: width * bins].reshape(width, bins).cpu()


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


#: What the null columns mean, stored with every result.
NULL_DEFINITION = (
    "null_mean/null_q95: mean and 95th percentile of D over n_null random reassignments "
    "of the pooled kernels of the bin to groups of sizes n_a and n_b (per component, "
    "hypergeometric from the pooled histogram counts); corrected = divergence - null_mean; "
    "p_value: permutation test of D over relabellings of the models (swaps within pairs, "
    "and among the models of pairs sharing a twin, when paired; reassignment across groups "
    "otherwise), from per-model histogram counts; "
    "p_adjusted: Holm over the depth bins; baseline_a/b: mean corrected D between two "
    "models of the same group"
)

#: Average kernels per histogram bin below which a depth bin is flagged ``few_kernels``.
MIN_KERNELS_PER_HISTOGRAM_BIN = 5

#: Most model pairs per group used for the same-kind baseline (random, seeded, beyond).
MAX_BASELINE_PAIRS = 45


@dataclass(frozen=True)
class DivergenceRow:
    """Distribution shift in one depth bin, with its null.

    Attributes:
        bin: Depth bin label, or ``"all"`` for every depth pooled.
        n_a: Non-sparse kernels of group a in the bin (a shared model counted as
            often as it is listed under ``twins="per_pair"``).
        n_b: The same for group b.
        divergence: D in nats, the paper's estimator exactly; NaN when a group has
            no kernel in the bin.
        null_mean: Mean D over ``n_null`` random reassignments of the bin's pooled
            kernels to groups of sizes ``n_a`` and ``n_b``: the divergence expected
            from the sample sizes alone, with no difference at all.
        null_q95: 95th percentile of those null draws.
        corrected: ``divergence - null_mean`` (the sample-size bias removed). A bias
            correction, not a test: models of the same kind differ too (see
            ``baseline_a``/``baseline_b``).
        p_value: Permutation p-value of D over relabellings of the *models* (the
            unit of inference): do the groups differ more than models differ among
            themselves? NaN when fewer than two distinct relabellings exist (one
            model per group, one pair).
        p_adjusted: ``p_value`` adjusted over the depth bins (Holm); for ``"all"``
            (a single test) equal to ``p_value``.
        baseline_a: Mean ``corrected`` D between two models of group a (the same
            kind); NaN with fewer than two distinct models.
        baseline_b: The same within group b.
        few_kernels: Fewer than ``MIN_KERNELS_PER_HISTOGRAM_BIN`` (5) kernels per
            histogram bin on average in the smaller group: the histograms are mostly
            empty bins and D mostly sample-size bias.
    """

    bin: str
    n_a: int
    n_b: int
    divergence: float
    null_mean: float = math.nan
    null_q95: float = math.nan
    corrected: float = math.nan
    p_value: float = math.nan
    p_adjusted: float = math.nan
    baseline_a: float = math.nan
    baseline_b: float = math.nan
    few_kernels: bool = False


@dataclass(frozen=True, eq=False, repr=False)
class DivergenceByDepth(RowTable):
    """The paper's distribution shift per depth bin, with its null; prints as a table.

    Attributes:
        rows: One [`DivergenceRow`][filterstats.distribution.DivergenceRow] per depth
            bin in depth order, then ``"all"``.
        labels: Group labels ``(a, b)``.
        basis: The shared basis (its EVR are the weights).
        value_range: Histogram range shared by all components and bins.
        bins: Histogram bins.
        floor: Floor of empty bins.
        twins: ``"per_pair"`` or ``"unique"``.
        eps: Sparsity threshold.
        kernel_size: Kernel size selected.
        depth_bins: Number of depth bins, ``first_bin``, ``include_lowest`` as a dict.
        n_models: Models listed per group ``(a, b)`` (as counted by ``twins``).
        n_distinct_models: Distinct models per group ``(a, b)``.
        design: ``"paired"`` (model ``i`` of a with model ``i`` of b) or ``"unpaired"``.
        n_null: Kernel reassignments per bin for ``null_mean``/``null_q95``.
        n_permutations: Most model relabellings for ``p_value``.
        permutations: How ``p_value`` was obtained: ``"exact"`` (every distinct
            relabelling), ``"random"`` or ``"not available"``.
        n_relabellings: Distinct model relabellings (the observed one included).
        p_min: Smallest attainable ``p_value`` (NaN: no test possible).
        seed: Seed of the null draws and random relabellings.
        version: filterstats version that computed the result.
    """

    rows: tuple[DivergenceRow, ...]
    labels: tuple[str, str]
    basis: PCABasis
    value_range: tuple[float, float]
    bins: int
    floor: float
    twins: str
    eps: float = 0.01
    kernel_size: tuple[int, ...] = (3, 3)
    depth_bins: dict[str, Any] | None = None
    n_models: tuple[int, int] = (0, 0)
    n_distinct_models: tuple[int, int] = (0, 0)
    design: str = "unpaired"
    n_null: int = 0
    n_permutations: int = 0
    permutations: str = "not available"
    n_relabellings: int = 1
    p_min: float = math.nan
    seed: int = 0
    version: str = ""
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

    @property
    def p_value_note(self) -> str:
        """What the p-values can say with this many models, in words."""
        a, b = self.n_models
        if self.permutations == "not available":
            unit = "one pair" if self.design == "paired" else f"{a} and {b} model(s)"
            return (
                f"p_value not available: with {unit} no relabelling of the models exists, so "
                "no inference across models is possible (D and corrected are descriptive)"
            )
        how = (
            f"all {self.n_relabellings} distinct relabellings"
            if self.permutations == "exact"
            else f"{self.n_permutations} random relabellings of {self.n_relabellings}"
        )
        unit = plural(a, "pair") if self.design == "paired" else f"{a} vs {plural(b, 'model')}"
        return (
            f"p_value over {how} of {unit} ({self.design}); smallest attainable p {self.p_min:.4g}"
        )

    def provenance(self) -> dict[str, Any]:
        """How the result was made, as stored in every export.

        Returns:
            A JSON-ready dict: labels, eps, kernel size, histogram bins and range,
            floor, twins, depth bins, models per group, design, n_null,
            n_permutations, the permutations used, p_min, seed, the definition of
            the nulls and the library version.
        """
        return {
            "estimator": "EVR-weighted symmetric KL of 70-bin-style histograms (paper)",
            "labels": list(self.labels),
            "eps": self.eps,
            "kernel_size": list(self.kernel_size),
            "bins": self.bins,
            "value_range": list(self.value_range),
            "floor": self.floor,
            "twins": self.twins,
            "depth_bins": dict(self.depth_bins or {}),
            "n_models": list(self.n_models),
            "n_distinct_models": list(self.n_distinct_models),
            "design": self.design,
            "n_null": self.n_null,
            "n_permutations": self.n_permutations,
            "permutations": self.permutations,
            "n_relabellings": self.n_relabellings,
            "p_min": None if math.isnan(self.p_min) else self.p_min,
            "seed": self.seed,
            "multiplicity": "Holm over depth bins",
            "null_definition": NULL_DEFINITION,
            "version": self.version,
        }

    def _title(self) -> str:
        a, b = self.labels
        return (
            f"Distribution shift {a} vs {b}: EVR-weighted symmetric KL, {self.bins} bins over "
            f"[{self.value_range[0]:.4g}, {self.value_range[1]:.4g}], twins {self.twins}, "
            f"eps={self.eps:g}, kernel={'x'.join(map(str, self.kernel_size))}, models "
            f"{self.n_models[0]}+{self.n_models[1]} ({self.design}), n_null={self.n_null}, "
            f"seed={self.seed}, filterstats {self.version}"
        )

    def __repr__(self) -> str:
        a, b = self.labels
        lines = [
            [r.bin, str(r.n_a), str(r.n_b), fmt(r.divergence), fmt(r.null_mean),
             fmt(r.null_q95), fmt(r.corrected), fmt(r.p_value), fmt(r.p_adjusted),
             fmt(r.baseline_a), fmt(r.baseline_b), _row_note(r)]
            for r in self.rows
        ]  # fmt: skip
        head = [
            "bin", f"kernels {a}", f"kernels {b}", "D", "null mean", "null q95", "corrected",
            "p", "p (Holm)", f"within {a}", f"within {b}", "note",
        ]  # fmt: skip
        notes = [
            self.p_value_note,
            "null: D with the kernels of both groups reassigned at random (sample-size bias); "
            "corrected = D - null mean; within: mean corrected D between two models of one group",
        ]
        if any(r.few_kernels and r.n_a and r.n_b for r in self.rows):
            notes.append(
                f"few kernels: under {MIN_KERNELS_PER_HISTOGRAM_BIN} kernels per histogram bin "
                f"({self.bins} bins): D there is mostly sample-size bias"
            )
        return "\n".join([render_table(self._title(), head, lines), *notes])

    def _repr_html_(self) -> str:
        """The table as HTML; its title and notes (how it was made) as the caption."""
        caption = self._title() + ". " + self.p_value_note
        return html_table(self.to_records(), self.columns, caption=caption)

    def _export_provenance(self) -> dict[str, Any]:
        return self.provenance()


def _row_note(row: DivergenceRow) -> str:
    """A bin's note: no kernels on a side (no D at all), or too few for the histogram."""
    if row.n_a == 0 and row.n_b == 0:
        return "no layers"
    if row.n_a == 0 or row.n_b == 0:
        return "no layers in one group"
    return "few kernels" if row.few_kernels else ""


def _layer_bins(filterset: FilterSet, options: dict[str, Any]) -> list[str | None]:
    return assign_depth_bins(
        [-1 if layer.conv_depth is None else layer.conv_depth for layer in filterset],
        [math.nan if layer.conv_depth_norm is None else layer.conv_depth_norm
         for layer in filterset],
        **options,
    )  # fmt: skip


@dataclass(frozen=True)
class _Projection:
    """Per-model passes of ``filter_divergence``: coefficient range, histogram counts."""

    basis: PCABasis
    eps: float
    width: int
    options: dict[str, Any]

    def _layers(self, filterset: FilterSet) -> Iterator[tuple[str | None, Tensor, Tensor]]:
        """``(depth bin, coefficients, non-sparse mask)`` per chunk of each layer."""
        for layer, label in zip(filterset, _layer_bins(filterset, self.options)):
            if math.prod(layer.kernel_size) != self.width:
                continue
            for scaled, nonsparse in _scaled_chunks(layer, self.eps):
                yield label, self.basis.transform(scaled), nonsparse

    def range(self, filterset: FilterSet) -> tuple[float, float]:
        """Smallest and largest coefficient of every kernel (sparse ones included)."""
        low, high = math.inf, -math.inf
        for _, coefficients, _ in self._layers(filterset):
            if coefficients.numel():
                low = min(low, float(coefficients.min()))
                high = max(high, float(coefficients.max()))
        return low, high

    def counts(self, filterset: FilterSet, edges: np.ndarray) -> dict[str, np.ndarray]:
        """``{depth bin: (K, bins) int64 counts}`` of the non-sparse kernels, and "all"."""
        per_bin: dict[str, np.ndarray] = {}
        for label, coefficients, nonsparse in self._layers(filterset):
            hist = _histogram_counts(coefficients[nonsparse], edges).numpy()
            for key in (label, ALL_DEPTHS) if label is not None else (ALL_DEPTHS,):
                per_bin[key] = per_bin.get(key, 0) + hist
        return per_bin


def _bin_generator(seed: int, index: int, purpose: int) -> np.random.Generator:
    """An independent, reproducible stream per depth bin and purpose."""
    return np.random.default_rng([seed, index, purpose])


def filter_divergence(
    a: Any,
    b: Any,
    *,
    labels: tuple[str, str] = ("a", "b"),
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
    paired: bool | None = None,
    n_null: int = 200,
    n_permutations: int = 2000,
    seed: int = 0,
) -> DivergenceByDepth:
    """The paper's kernel-distribution shift between two groups, per depth bin, with nulls.

    ``divergence`` is the paper's estimator exactly. It is biased by sample size: with
    few kernels a 70-bin histogram is mostly empty bins, and two samples of the very
    same distribution give a large D. Each row therefore also holds the divergence
    expected with no difference (``null_mean``, ``null_q95``), the bias-corrected
    ``corrected``, a permutation ``p_value`` over the *models* (Holm-adjusted over the
    bins in ``p_adjusted``) and the same-kind baseline ``baseline_a``/``baseline_b``
    (see [`DivergenceRow`][filterstats.distribution.DivergenceRow]).

    Streaming: specs and paths in ``a``/``b`` are loaded one at a time (through
    [`extract_filters`][filterstats.extract_filters]) and dropped after use; only the
    basis moments, the coefficient range and per-model, per-depth-bin histogram counts
    (``K x bins`` integers) are kept, which is also all the nulls need. A spec is read
    up to three times (basis, range, histograms): pass ``basis`` and ``value_range``
    to read each once.

    Args:
        a: Model, [`FilterSet`][filterstats.FilterSet], spec or path, or a list of
            them (group a).
        b: The same for group b. A model listed several times (a twin shared by
            several pairs) counts that often under ``twins="per_pair"`` (the paper).
        labels: Names of the groups, ``("a", "b")`` unless given (as in ``compare`` and
            the command line): pass ``("robust", "normal")`` for the paper's groups.
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
        paired: Model ``i`` of a and model ``i`` of b form a pair (the paper's robust
            models and their normal twins); the permutation test then swaps within
            pairs, and among the models of pairs that share a twin (the shared twin's
            role, listed once per pair, goes to one of them). ``None``: paired when
            both lists have the same length and ``twins="per_pair"``.
        n_null: Random kernel reassignments per bin for ``null_mean``/``null_q95``
            (and per model pair for the baselines); 0 skips the nulls.
        n_permutations: Model relabellings at most; all distinct ones are enumerated
            when there are no more than this.
        seed: Seed of every random draw (the result is deterministic).

    Returns:
        A [`DivergenceByDepth`][filterstats.distribution.DivergenceByDepth]: one row per
        depth bin (NaN where a group has no kernel) and one for all depths.
    """
    eps = _check_eps(eps)
    _check_hist(bins, floor)
    if twins not in ("per_pair", "unique"):
        raise ValueError(f"`twins` must be 'per_pair' or 'unique', got {twins!r}.")
    if not isinstance(n_null, int) or n_null < 0:
        raise ValueError(f"`n_null` must be a non-negative integer, got {n_null!r}.")
    if not isinstance(n_permutations, int) or n_permutations < 1:
        raise ValueError(f"`n_permutations` must be a positive integer, got {n_permutations!r}.")
    src_a = _sources(a, "a", kernel_size)
    src_b = _sources(b, "b", kernel_size)
    if twins == "unique":
        src_a, src_b = _unique(src_a), _unique(src_b)
    if paired is None:
        paired = len(src_a) == len(src_b) and twins == "per_pair"
    elif paired and (len(src_a) != len(src_b) or twins != "per_pair"):
        raise ValueError(
            f"`paired=True` needs as many models in `a` as in `b` ({len(src_a)}, {len(src_b)}) "
            "and twins='per_pair'; pass paired=False for two independent groups."
        )
    everything = _unique(src_a + src_b)
    width = math.prod(kernel_size)
    if basis is None:
        count, total, outer = _moments(everything, eps, width)
        basis = _fit_basis(count, total, outer, kernel_size, "+".join(labels))
    fitted = basis
    options = {"bins": depth_bins, "first_bin": first_bin, "include_lowest": include_lowest}
    labels_depth = depth_bin_labels(depth_bins, first_bin=first_bin, include_lowest=include_lowest)

    projection = _Projection(fitted, eps, width, options)
    if value_range is None:
        low, high = math.inf, -math.inf
        for source in everything:  # one model at a time: nothing of it outlives the call
            low_i, high_i = projection.range(source.load())
            low, high = min(low, low_i), max(high, high_i)
        if not math.isfinite(low):
            raise ValueError(f"no {kernel_size} kernels in either group: nothing to compare.")
        value_range = (low, high)
    edges = _edges(value_range, bins)
    # Histogram counts per model and depth bin, one model at a time; a model listed
    # twice reuses them. These counts are all that D and both nulls need.
    counts = {id(source): projection.counts(source.load(), edges) for source in everything}
    weights = basis.explained_variance_ratio.numpy()
    zero = np.zeros((width, bins), dtype=np.int64)
    listed = src_a + src_b
    relabel = label_permutations(
        [id(s) for s in src_a], [id(s) for s in src_b], paired=paired,
        n_permutations=n_permutations, generator=np.random.default_rng([seed, 0, 2]),
    )  # fmt: skip
    groups_unique = (_unique(src_a), _unique(src_b))
    rows = []
    for index, label in enumerate((*labels_depth, ALL_DEPTHS)):
        per_model = np.stack([counts[id(s)].get(label, zero) for s in listed]).astype(np.int64)
        hist_a = per_model[: len(src_a)].sum(axis=0)
        hist_b = per_model[len(src_a) :].sum(axis=0)
        n_a, n_b = int(hist_a[0].sum()), int(hist_b[0].sum())
        few = min(n_a, n_b) < MIN_KERNELS_PER_HISTOGRAM_BIN * bins
        if n_a == 0 or n_b == 0:
            rows.append(DivergenceRow(label, n_a, n_b, math.nan, few_kernels=few))
            continue
        p = _probabilities(hist_a.astype(np.float64), edges, floor)
        q = _probabilities(hist_b.astype(np.float64), edges, floor)
        value = _symmetric_kl(p, q, weights)
        null_mean, null_q95 = _null_summary(
            hist_a + hist_b, n_a, n_null, edges, floor, weights, _bin_generator(seed, index, 0)
        )
        # Per distinct model, in the order of first listing (as `relabel` has them).
        distinct = np.stack([counts[id(s)].get(label, zero) for s in everything])
        p_value = permutation_p(distinct, value, relabel, edges=edges, floor=floor, weights=weights)
        baselines = [
            _baseline(
                [counts[id(s)].get(label, zero) for s in group], n_null, edges, floor, weights,
                _bin_generator(seed, index, 3 + side),
            )
            for side, group in enumerate(groups_unique)
        ]  # fmt: skip
        row = DivergenceRow(
            label, n_a, n_b, value, null_mean=null_mean, null_q95=null_q95,
            corrected=value - null_mean, p_value=p_value, baseline_a=baselines[0],
            baseline_b=baselines[1], few_kernels=few,
        )  # fmt: skip
        rows.append(row)
    rows = _adjust(rows)
    from filterstats._version import __version__

    if relabel.n_distinct < 2:
        how = "not available"
    else:
        how = "exact" if relabel.exact else "random"
    return DivergenceByDepth(
        rows=tuple(rows),
        labels=(str(labels[0]), str(labels[1])),
        basis=basis,
        value_range=(float(value_range[0]), float(value_range[1])),
        bins=bins,
        floor=floor,
        twins=twins,
        eps=eps,
        kernel_size=tuple(kernel_size),
        depth_bins=dict(options),
        n_models=(len(src_a), len(src_b)),
        n_distinct_models=(len(groups_unique[0]), len(groups_unique[1])),
        design=relabel.design,
        n_null=n_null,
        n_permutations=n_permutations,
        permutations=how,
        n_relabellings=relabel.n_distinct,
        p_min=relabel.p_min,
        seed=seed,
        version=__version__,
    )


def _adjust(rows: list[DivergenceRow]) -> list[DivergenceRow]:
    """``p_adjusted``: Holm over the depth bins (NaN ones not counted); ``"all"`` as it is."""
    from filterstats._stats import holm

    depth = [i for i, r in enumerate(rows) if r.bin != ALL_DEPTHS]
    adjusted = dict(zip(depth, holm(np.array([rows[i].p_value for i in depth]))))
    rows = [
        dataclasses.replace(r, p_adjusted=float(adjusted.get(i, r.p_value)))
        for i, r in enumerate(rows)
    ]
    # One NaN object, so that rows (and their records) of equal results compare equal.
    return [_one_nan(r) for r in rows]


def _one_nan(row: DivergenceRow) -> DivergenceRow:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(row):
        value = getattr(row, f.name)
        if isinstance(value, float) and math.isnan(value):
            values[f.name] = math.nan
    return dataclasses.replace(row, **values)


def _null_summary(
    pooled: np.ndarray,
    n_a: int,
    n_null: int,
    edges: np.ndarray,
    floor: float,
    weights: np.ndarray,
    generator: np.random.Generator,
) -> tuple[float, float]:
    draws = kernel_null(
        pooled, n_a, n_null=n_null, edges=edges, floor=floor, weights=weights, generator=generator
    )
    if draws.size == 0:
        return math.nan, math.nan
    return float(draws.mean()), float(np.quantile(draws, 0.95))


def _baseline(
    group: Sequence[np.ndarray],
    n_null: int,
    edges: np.ndarray,
    floor: float,
    weights: np.ndarray,
    generator: np.random.Generator,
) -> float:
    """Mean corrected D between two distinct models of one group (NaN: under two)."""
    pairs = list(itertools.combinations(range(len(group)), 2))
    if len(pairs) > MAX_BASELINE_PAIRS:
        chosen = generator.choice(len(pairs), size=MAX_BASELINE_PAIRS, replace=False)
        pairs = [pairs[i] for i in sorted(chosen)]
    values = []
    for i, j in pairs:
        x, y = np.asarray(group[i]), np.asarray(group[j])
        n_x, n_y = int(x[0].sum()), int(y[0].sum())
        if n_x == 0 or n_y == 0:
            continue
        value = float(batch_divergence(x.astype(np.float64), y.astype(np.float64), edges, floor,
                                       weights))  # fmt: skip
        null_mean, _ = _null_summary(x + y, n_x, n_null, edges, floor, weights, generator)
        values.append(value - null_mean)
    return float(np.mean(values)) if values else math.nan


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
