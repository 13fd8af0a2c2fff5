"""Sparsity, diversity (variance entropy) and orthogonality of convolution filters.

Definitions follow Gavrikov & Keuper, "Adversarial Robustness through the Lens of
Convolutional Filters" (CVPR-W 2022, arXiv:2204.02481) as its analysis code computes
them (``definition="paper"``, the default), or the authors' later package
torchconvquality 0.3.0 (``definition="torchconvquality"``). See the Metrics page of
the documentation for formulas and every deliberate difference from the references.

Every function takes one layer's weight ``(C_out, C_in / groups, *kernel)`` and returns
a 0-d tensor, or a [`FilterSet`][filterstats.FilterSet] / sequence of weights and
returns a 1-D tensor with one value per layer, on the weights' device, in float64.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Union

import torch
from torch import Tensor, nn

from filterstats import kernels
from filterstats._checks import NanPolicy, check_choice, check_eps
from filterstats._tables import MetricAttributes
from filterstats._warnings import FilterStatsWarning
from filterstats.layers import ConvLayer, FilterSet

__all__ = [
    "DiversitySettings",
    "LayerMetrics",
    "diversity",
    "frequency_profile",
    "measure",
    "orthogonality",
    "sparsity",
]

Definition = Literal["paper", "torchconvquality"]
FilterInput = Union[Tensor, ConvLayer, FilterSet, Sequence[Union[Tensor, ConvLayer]]]  # noqa: UP007

_SAFE_SCALE = (2.0**-30, 2.0**30)  # float32 Gram products stay finite and normal
_DEFINITIONS = ("paper", "torchconvquality")
_NAN_POLICIES = ("propagate", "raise", "omit")


@dataclass(frozen=True)
class DiversitySettings:
    """How kernels enter the variance entropy.

    Attributes:
        scale_filters: Divide each kernel by its own largest |value| first (paper).
        drop_sparse: Leave out the sparse kernels (the reference's "clean" variant).
        normalize: Divide by torchconvquality's fitted threshold of the kernel count.
        strict: Sparse means ``max|f| < eps * max|W|`` (torchconvquality) instead of
            ``<=`` (paper).
    """

    scale_filters: bool
    drop_sparse: bool
    normalize: bool
    strict: bool

    @classmethod
    def preset(
        cls,
        definition: Definition,
        *,
        scale_filters: bool | None = None,
        drop_sparse: bool | None = None,
        normalize: bool | None = None,
        strict: bool | None = None,
    ) -> DiversitySettings:
        """Settings of a named definition, with optional overrides.

        Args:
            definition: ``"paper"`` (scaled, sparse dropped, ``<=``) or
                ``"torchconvquality"`` (raw kernels, all kept, ``<``).
            scale_filters: Override.
            drop_sparse: Override.
            normalize: Override.
            strict: Override.

        Returns:
            The settings.
        """
        check_choice("definition", definition, _DEFINITIONS)
        paper = definition == "paper"
        return cls(
            scale_filters=paper if scale_filters is None else bool(scale_filters),
            drop_sparse=paper if drop_sparse is None else bool(drop_sparse),
            normalize=False if normalize is None else bool(normalize),
            strict=(not paper) if strict is None else bool(strict),
        )


@dataclass(frozen=True, eq=False)
class LayerMetrics(MetricAttributes):
    """All per-layer metrics of a set of layers, computed in one batched pass.

    Every tensor has shape ``(L,)`` and lives on the first layer's device. The
    metric values are in ``metrics``, keyed by the names of
    [`filterstats.metric_table`][filterstats.metric_table], and read as attributes:
    ``result.diversity``.

    Attributes:
        names: Layer names (``"layer0"``, ... for bare tensors).
        n_filters: Kernels per layer (``C_out * C_in / groups``).
        n_nonsparse: Non-sparse kernels per layer.
        out_channels: Output filters per layer.
        metrics: ``{metric name: (L,) tensor}``: ``sparsity`` (fraction of sparse
            kernels), ``diversity`` (variance entropy under ``settings``),
            ``diversity_clean`` (of the non-sparse kernels only; equal to
            ``diversity`` for the paper definition), ``entropy_raw`` (raw kernels, all
            kept, not normalised: CNN Filter DB's variant), ``orthogonality`` (1 minus
            the mean |cosine| between distinct output filters).
            ``group_orthogonality`` (the same within each group of filters that
            share inputs), ``freq_dc`` / ``freq_low`` / ``freq_high`` (shares of the
            kernels' energy in the DCT-II bands of
            [`frequency_bands`][filterstats.kernels.frequency_bands]).
        eps: Sparsity threshold used.
        settings: Diversity settings used.
        definition: Name of the definition preset.
        frequency_energy: Per layer, the summed energy at each DCT-II frequency,
            shape ``kernel_size`` float64 (index ``(0, 0)``: DC); empty when the
            frequency profile was not computed.
    """

    names: tuple[str, ...]
    n_filters: Tensor
    n_nonsparse: Tensor
    out_channels: Tensor
    metrics: dict[str, Tensor]
    eps: float
    settings: DiversitySettings
    definition: str
    frequency_energy: tuple[Tensor, ...] = ()
    _missing_metric = None  # a metric not computed is an AttributeError, not NaN

    def __len__(self) -> int:
        return len(self.names)


# --------------------------------------------------------------------------- inputs


def _as_layers(x: object, argument: str = "filters") -> tuple[list[Tensor], list[str], bool]:
    """Normalise any accepted input to (weights, names, is_single).

    A model (module, state dict, path or spec string) goes through the one resolver,
    ``extract_filters`` (its 3x3 layers, as ``analyze`` would measure them).
    """
    weights, names, single, _ = _as_grouped_layers(x, argument)
    return weights, names, single


def _as_grouped_layers(
    x: object, argument: str = "filters"
) -> tuple[list[Tensor], list[str], bool, list[int | None]]:
    """[`_as_layers`][], and each layer's convolution groups (``None``: unknown).

    A bare weight tensor is one dense layer (groups 1); a
    [`ConvLayer`][filterstats.ConvLayer] carries its own groups.
    """
    if isinstance(x, (nn.Module, Mapping, str, os.PathLike)):
        from filterstats.resolve import extract_filters

        x = extract_filters(x, argument=argument)
    if isinstance(x, Tensor):
        return [_check_weight(x, argument)], ["layer0"], True, [1]
    if isinstance(x, ConvLayer):
        return [_check_weight(x.weight, argument)], [x.name], True, [x.groups]
    if isinstance(x, FilterSet):
        weights = [_check_weight(layer.weight, argument) for layer in x]
        return weights, list(x.names), False, [layer.groups for layer in x]
    if isinstance(x, Sequence) and not isinstance(x, (str, bytes)):
        weights, names = [], []
        groups: list[int | None] = []
        for i, item in enumerate(x):
            if isinstance(item, ConvLayer):
                weights.append(_check_weight(item.weight, f"{argument}[{i}]"))
                names.append(item.name)
                groups.append(item.groups)
            elif isinstance(item, Tensor):
                weights.append(_check_weight(item, f"{argument}[{i}]"))
                names.append(f"layer{i}")
                groups.append(1)
            else:
                raise TypeError(
                    f"`{argument}[{i}]` must be a weight tensor or ConvLayer, "
                    f"got {type(item).__name__}."
                )
        return weights, names, False, groups
    raise TypeError(
        f"`{argument}` must be a weight tensor (C_out, C_in, kH, kW), a FilterSet, a list "
        f"of weights, or a model (anything `filterstats.extract_filters` takes), got "
        f"{type(x).__name__}."
    )


def _check_weight(weight: Tensor, argument: str) -> Tensor:
    if weight.ndim < 3:
        raise ValueError(
            f"`{argument}` must be a convolution weight (C_out, C_in / groups, *kernel) with "
            f"3 to 5 dimensions, got shape {tuple(weight.shape)}. A 2-D tensor is a linear "
            "layer or kernel matrix: reshape it to (C_out, C_in, kH, kW)."
        )
    if weight.numel() == 0:
        raise ValueError(
            f"`{argument}` has no elements (shape {tuple(weight.shape)}): a convolution with "
            "zero filters or zero input channels has no filter statistics."
        )
    if weight.ndim > 5:
        raise ValueError(
            f"`{argument}` must have 3 to 5 dimensions (Conv1d/2d/3d weights), got shape "
            f"{tuple(weight.shape)}. For a stack of layers pass a list: `list(stack)`."
        )
    if not weight.is_floating_point():
        raise TypeError(
            f"`{argument}` must be floating point, got {weight.dtype}. Dequantize first "
            "(`weight.dequantize()`) or use `extract_filters`, which does it."
        )
    if weight.device.type == "meta":
        raise ValueError(
            f"`{argument}` is on the meta device and holds no values; load or materialise "
            "the weights first."
        )
    return weight.detach()


# ----------------------------------------------------------------- shared passes


#: One weighting of the kernels for the variance entropy: (scale_filters, drop_sparse).
_Variant = tuple[bool, bool]


@dataclass(frozen=True)
class _LayerPass:
    """Per-layer results of the fused pass (no per-kernel state is kept)."""

    layer_max: Tensor  # (L,) float64, NaN/inf if non-finite (omit: over finite kernels)
    finite: Tensor  # (L,) bool
    n_kernels: Tensor  # (L,) float64
    n_valid: Tensor  # (L,) float64
    n_sparse: Tensor  # (L,) float64
    moments: list[list[kernels.Moments]]  # [variant][layer]


def _layer_pass(
    weights: list[Tensor],
    eps: float,
    strict: bool,
    nan_policy: NanPolicy,
    variants: list[_Variant] | None = None,
    chunk_bytes: int = kernels.DEFAULT_CHUNK_BYTES,
    *,
    count_sparse: bool = True,
) -> _LayerPass:
    """The layer maxima (one reduction), then sparsity and all moments in one read."""
    variants = variants or []
    omit = nan_policy == "omit"
    tops, finite, n_kernels, n_valid, n_sparse = [], [], [], [], []
    moments: list[list[kernels.Moments]] = [[] for _ in variants]
    for weight in weights:
        rows = weight.reshape(weight.shape[0] * weight.shape[1], -1)
        n_kernels.append(torch.tensor(float(rows.shape[0]), dtype=torch.float64))  # on the host
        one_read = (
            kernels.layer_sparsity(rows, eps, strict=strict, omit_nonfinite=omit)
            if count_sparse and not variants
            else None
        )
        if one_read is not None:  # sparsity alone, compiled: the maxima of one read
            tops.append(one_read.top)
            finite.append(one_read.finite)
            n_valid.append(one_read.n_valid)
            n_sparse.append(one_read.n_sparse)
            continue
        top, is_finite = kernels.layer_maxabs(rows, omit_nonfinite=omit, chunk_bytes=chunk_bytes)
        tops.append(top)
        finite.append(is_finite)
        if not count_sparse and not variants:
            n_valid.append(n_kernels[-1])
            continue
        result = kernels.kernel_pass(
            rows,
            eps * top,
            strict=strict,
            all_sparse=~(top > 0),  # all zeros: every kernel is sparse
            variants=variants,
            omit_nonfinite=omit,
            chunk_bytes=chunk_bytes,
        )
        n_sparse.append(result.n_sparse)
        n_valid.append(result.n_valid)
        for v, layer_moments in enumerate(result.moments):
            moments[v].append(layer_moments)
    device = weights[0].device if weights else torch.device("cpu")
    return _LayerPass(
        layer_max=_stack(tops, device, torch.float64),
        finite=_stack(finite, device, torch.bool),
        n_kernels=_stack(n_kernels, device, torch.float64),
        n_valid=_stack(n_valid, device, torch.float64),
        n_sparse=_stack(n_sparse, device, torch.float64),
        moments=moments,
    )


def _stack(values: list[Tensor], device: torch.device, dtype: torch.dtype) -> Tensor:
    """``torch.stack`` on ``device``: one transfer for the list, not one per value."""
    if not values:
        return torch.zeros(0, dtype=dtype, device=device)
    if len({value.device for value in values}) == 1:
        return torch.stack([value.to(dtype=dtype) for value in values]).to(device)
    return torch.stack([value.to(device=device, dtype=dtype) for value in values])


def _check_nan_policy(names: list[str], first: _LayerPass, nan_policy: NanPolicy) -> None:
    if nan_policy != "raise" or not names:
        return
    finite = first.finite.tolist()  # one host transfer for the whole set
    bad = [name for name, ok in zip(names, finite) if not ok]
    if bad:
        raise ValueError(
            f"non-finite (NaN or inf) weights in layer(s) {bad}. Use nan_policy='omit' to "
            "leave out the affected kernels or 'propagate' to return NaN for those layers."
        )


def _sparsity_values(first: _LayerPass) -> Tensor:
    values = first.n_sparse / first.n_valid.clamp_min(1.0)
    return torch.where(first.n_valid > 0, values, torch.nan)


def _entropies(moment_sets: Sequence[list[kernels.Moments]], device: torch.device) -> list[Tensor]:
    """Entropies (not normalised) of several variants for all layers, ``(L,)`` each.

    One batched eigen-solve per kernel size for all variants together: on CUDA the
    solver's error check is a host synchronisation, so there is one per kernel size,
    not one per variant.
    """
    n_layers = len(moment_sets[0]) if moment_sets else 0
    # (variant, layer) items grouped by what a batched solve needs in common.
    groups: dict[tuple[int, bool], list[tuple[int, int]]] = {}
    for v, moments in enumerate(moment_sets):
        for i, moment in enumerate(moments):
            key = (moment.total.shape[0], moment.shift is None)
            groups.setdefault(key, []).append((v, i))
    parts: list[list[Tensor]] = [[] for _ in moment_sets]
    order: list[list[int]] = [[] for _ in moment_sets]
    for key in sorted(groups):
        items = groups[key]
        picked = [moment_sets[v][i] for v, i in items]
        shifts = [m.shift for m in picked if m.shift is not None]
        count = _stack([m.count for m in picked], device, torch.float64)
        values = kernels.variance_entropy(
            count,
            _stack([m.total for m in picked], device, torch.float64),
            _stack([m.outer for m in picked], device, torch.float64),
            None if key[1] else _stack(shifts, device, torch.float64),
        )
        start = 0
        for v in range(len(moment_sets)):
            layers = [i for w, i in items if w == v]
            parts[v].append(values[start : start + len(layers)])
            order[v].extend(layers)
            start += len(layers)
    results = []
    for v in range(len(moment_sets)):
        if not n_layers:
            results.append(torch.zeros(0, dtype=torch.float64, device=device))
            continue
        joined = torch.cat(parts[v])
        if order[v] != list(range(n_layers)):  # several kernel sizes: back to layer order
            position = [0] * n_layers
            for slot, layer in enumerate(order[v]):
                position[layer] = slot
            joined = joined[torch.tensor(position, device=device)]
        results.append(joined)
    return results


def _normalized(values: Tensor, moments: list[kernels.Moments], device: torch.device) -> Tensor:
    """Entropies divided by torchconvquality's threshold of each layer's kernel count."""
    count = _stack([m.count for m in moments], device, torch.float64)
    return values / kernels.entropy_threshold(count)


#: Layers with at most this many output filters are stacked by shape and their Gram
#: matrices computed in one batched product: for them the per-layer loop costs more
#: than the arithmetic.
_BATCH_MAX_OUT = 128


@dataclass(frozen=True)
class _GramInputs:
    """Output filters ready for Gram products: scaled weights, counts and row masks."""

    weights: list[Tensor]  # brought to unit scale where float32 products would not stay finite
    counts: list[float | Tensor]  # filters per layer: on the host where known
    masks: list[Tensor | None]  # (C_out,) finite rows, where NaN/inf rows are left out


def _gram_inputs(
    weights: list[Tensor], first: _LayerPass, nan_policy: NanPolicy, chunk_bytes: int
) -> _GramInputs:
    # float32 Gram products overflow above ~1e19 and underflow below ~1e-19: bring such
    # (rare) layers to unit scale first; orthogonality does not depend on the scale.
    # One host transfer for the whole set: the layer maxima, and which layers hold
    # NaN/inf (under "omit" only those get a row mask; their masked copy is the one
    # full-size copy this policy makes).
    tops, finite_flags = torch.stack([first.layer_max, first.finite.to(torch.float64)]).tolist()
    weights = [
        weight / top
        if weight.dtype != torch.float64 and math.isfinite(top) and top > 0
        and not _SAFE_SCALE[0] <= top <= _SAFE_SCALE[1]
        else weight
        for weight, top in zip(weights, tops)
    ]  # fmt: skip
    # Filters per layer: a number where known on the host (no per-layer transfer), a
    # device tensor where NaN/inf rows are left out.
    counts: list[float | Tensor] = []
    masks: list[Tensor | None] = []
    finite = [bool(flag) or nan_policy != "omit" for flag in finite_flags]
    for i, weight in enumerate(weights):
        n_out = weight.shape[0]
        row_mask = None
        n: float | Tensor = float(n_out)
        if not finite[i]:
            row_mask = kernels.finite_rows(weight.reshape(n_out, -1), chunk_bytes=chunk_bytes)
            n = row_mask.sum().to(torch.float64)
        counts.append(n)
        masks.append(row_mask)
    return _GramInputs(weights, counts, masks)


def _orthogonality_values(
    weights: list[Tensor],
    first: _LayerPass,
    nan_policy: NanPolicy,
    chunk_bytes: int,
    prepared: _GramInputs | None = None,
) -> Tensor:
    device = first.layer_max.device
    prepared = prepared or _gram_inputs(weights, first, nan_policy, chunk_bytes)
    weights, counts, masks = prepared.weights, prepared.counts, prepared.masks
    offdiag: list[Tensor | None] = [None] * len(weights)
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, weight in enumerate(weights):
        n_out = weight.shape[0]
        row_mask = masks[i]
        layer_bytes = weight.numel() * weight.element_size()
        if n_out <= _BATCH_MAX_OUT and 2 * layer_bytes <= chunk_bytes:
            key = (tuple(weight.shape), weight.dtype, weight.device)
            groups.setdefault(key, []).append(i)
        else:
            offdiag[i] = kernels.offdiag_abs_gram_sum(
                weight.reshape(n_out, -1), row_mask=row_mask, chunk_bytes=chunk_bytes
            )
    for index in groups.values():
        layer_bytes = weights[index[0]].numel() * weights[index[0]].element_size()
        per_batch = max(1, chunk_bytes // max(layer_bytes, 1))
        for start in range(0, len(index), per_batch):
            batch = index[start : start + per_batch]
            stack = torch.stack([weights[i].reshape(weights[i].shape[0], -1) for i in batch])
            row_mask = None
            if any(masks[i] is not None for i in batch):
                row_mask = torch.stack(
                    [
                        mask
                        if (mask := masks[i]) is not None
                        else torch.ones(weights[i].shape[0], dtype=torch.bool, device=device)
                        for i in batch
                    ]
                )
            sums = kernels.offdiag_abs_gram_sum_batched(stack, row_mask=row_mask)
            for j, i in enumerate(batch):
                offdiag[i] = sums[j]
    values = []
    for total, n in zip(offdiag, counts):
        assert total is not None  # every layer went through one of the two paths
        if isinstance(n, float):
            pairs_known = n * (n - 1.0)  # as kernels.pair_count, on the host
            if pairs_known > 0:
                values.append(1.0 - total / pairs_known)
            else:
                values.append(torch.full_like(total, torch.nan))
            continue
        pairs = kernels.pair_count(n)
        value = 1.0 - total / torch.where(pairs > 0, pairs, 1.0)
        values.append(torch.where(pairs > 0, value, torch.nan))
    return _stack(values, device, torch.float64)


def _group_orthogonality_values(
    prepared: _GramInputs,
    groups: Sequence[int | None],
    reference: Tensor,
    chunk_bytes: int,
) -> Tensor:
    r"""Orthogonality within each group of filters that share their inputs, pooled.

    Group :math:`g` of a layer with ``groups`` :math:`G` holds output filters
    :math:`g\,n/G, \dots, (g+1)\,n/G - 1`; only they see the same input channels.
    The value is :math:`1 - \sum_g S_g / \sum_g n_g (n_g - 1)` with :math:`S_g` the
    summed off-diagonal :math:`|\cos|` within group :math:`g`: the mean over groups
    weighted by their pairs (all groups have the same size unless filters holding
    NaN/inf were left out). Dense layers (``groups == 1``) give ``reference``, their
    orthogonality; unknown groups and groups of one filter (depthwise layers with
    one filter per input channel) give NaN. One batched Gram product per chunk of
    groups of a layer.
    """
    device = reference.device
    values: list[Tensor] = []
    nan = torch.full((), torch.nan, dtype=torch.float64, device=device)
    for i, (weight, group) in enumerate(zip(prepared.weights, groups)):
        n_out = weight.shape[0]
        if group is None or group < 1 or n_out % group or n_out // group < 2:
            values.append(nan)
            continue
        if group == 1:
            values.append(reference[i])
            continue
        per_group = n_out // group
        rows = weight.reshape(group, per_group, -1)
        mask = prepared.masks[i]
        row_mask = None if mask is None else mask.reshape(group, per_group)
        item = max(weight.element_size(), 4)  # half/bfloat16 are computed in float32
        group_bytes = per_group * rows.shape[2] * item + per_group * per_group * 8
        per_batch = max(1, chunk_bytes // max(group_bytes, 1))
        total = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, group, per_batch):
            stop = min(start + per_batch, group)
            total = (
                total
                + kernels.offdiag_abs_gram_sum_batched(
                    rows[start:stop], row_mask=None if row_mask is None else row_mask[start:stop]
                ).sum()
            )
        if row_mask is None:  # known on the host: no transfer
            values.append(1.0 - total / (group * per_group * (per_group - 1.0)))
            continue
        pairs = kernels.pair_count(row_mask.sum(dim=1)).sum()
        value = 1.0 - total / torch.where(pairs > 0, pairs, 1.0)
        values.append(torch.where(pairs > 0, value, torch.nan))
    return _stack(values, device, torch.float64)


def _frequency_values(
    moments: list[kernels.Moments], weights: list[Tensor], device: torch.device
) -> tuple[list[Tensor], Tensor]:
    """Per-frequency energies of each layer and its (DC, low, high) shares.

    One batched product per kernel shape (see
    [`frequency_energy`][filterstats.kernels.frequency_energy]), from moments the
    kernel pass already summed.

    Returns:
        ``(energies, shares)``: one float64 tensor of shape ``kernel_size`` per layer
        (energy at each DCT-II frequency), and ``(3, L)`` float64 band shares, NaN
        where no energy was counted.
    """
    n_layers = len(weights)
    energies: list[Tensor] = [torch.zeros(0, dtype=torch.float64, device=device)] * n_layers
    parts: list[Tensor] = []
    order: list[int] = []
    shapes: dict[tuple[int, ...], list[int]] = {}
    for i, weight in enumerate(weights):
        shapes.setdefault(tuple(weight.shape[2:]), []).append(i)
    for shape, index in shapes.items():
        picked = [moments[i] for i in index]
        energy = kernels.frequency_energy(
            _stack([m.count for m in picked], device, torch.float64),
            _stack([m.total for m in picked], device, torch.float64),
            _stack([m.outer for m in picked], device, torch.float64),
            None
            if any(m.shift is None for m in picked)
            else _stack([m.shift for m in picked if m.shift is not None], device, torch.float64),
            kernels.dct_basis(shape),
        )
        bands = kernels.frequency_bands(shape).to(device)
        one_hot = torch.nn.functional.one_hot(bands, 3).to(torch.float64)
        total = energy.sum(dim=1)
        per_band = (energy @ one_hot) / torch.where(total > 0, total, 1.0)[:, None]
        per_band = torch.where((total > 0)[:, None], per_band, torch.nan)
        parts.append(per_band.T)
        order.extend(index)
        for j, i in enumerate(index):
            energies[i] = energy[j].reshape(shape)
    if not parts:
        return energies, torch.zeros(3, 0, dtype=torch.float64, device=device)
    shares = torch.cat(parts, dim=1)
    if order != list(range(n_layers)):  # several kernel shapes: back to layer order
        position = [0] * n_layers
        for slot, layer in enumerate(order):
            position[layer] = slot
        shares = shares[:, torch.tensor(position, device=device)]
    return energies, shares


def _finalize(
    values: Tensor, first: _LayerPass, nan_policy: NanPolicy, *, dead_is_nan: bool
) -> Tensor:
    if nan_policy == "propagate":
        values = torch.where(first.finite, values, torch.nan)
    if dead_is_nan:
        values = torch.where(first.layer_max > 0, values, torch.nan)
    return values


def _warn_nonfinite(
    names: list[str], finite: list[bool], nan_policy: NanPolicy, stacklevel: int
) -> None:
    """One warning per call naming every layer with NaN/inf weights (not under "raise")."""
    bad = [name for name, ok in zip(names, finite) if not ok]
    if not bad:
        return
    effect = (
        "the kernels and output filters holding them are left out"
        if nan_policy == "omit"
        else "their metrics are NaN; use nan_policy='omit' to leave out the affected kernels"
    )
    warnings.warn(
        f"non-finite (NaN or inf) weights in layer(s) {bad}: {effect} (nan_policy={nan_policy!r}).",
        FilterStatsWarning,
        stacklevel=stacklevel,
    )


def _warn_degenerate(
    names: list[str], weights: list[Tensor], first: _LayerPass, metric: str, nan_policy: NanPolicy
) -> None:
    if not names:
        return
    verb = "are" if " and " in metric else "is"
    # One host transfer for the whole set.
    dead, no_finite, finite = torch.stack(
        [first.layer_max == 0, first.n_valid == 0, first.finite]
    ).tolist()
    _warn_nonfinite(names, finite, nan_policy, stacklevel=4)
    for name, weight, is_dead, empty in zip(names, weights, dead, no_finite):
        if empty:
            warnings.warn(
                f"layer {name!r} has no finite weights left after nan_policy='omit': "
                f"{metric} {verb} NaN.",
                FilterStatsWarning,
                stacklevel=3,
            )
        elif is_dead:
            warnings.warn(
                f"layer {name!r} is all zeros: sparsity is 1 and {metric} {verb} NaN.",
                FilterStatsWarning,
                stacklevel=3,
            )
        elif "orthogonality" in metric and weight.shape[0] < 2:
            warnings.warn(
                f"layer {name!r} has a single output filter: orthogonality is NaN.",
                FilterStatsWarning,
                stacklevel=3,
            )


def _warn_normalized_above_one(
    names: list[str], weights: list[Tensor], groups: Sequence[int | None], values: Tensor
) -> None:
    """One warning naming the layers whose normalised entropy exceeds 1, and why."""
    if not names:
        return
    above = [(name, weight, group, value)
             for name, weight, group, value in zip(names, weights, groups, values.tolist())
             if value > 1.0]  # fmt: skip
    if not above:
        return
    grouped, dense = [], []
    for name, weight, group, value in above:
        kernel_count = weight.shape[0] * weight.shape[1]
        if group and group > 1:
            grouped.append(f"{name!r} ({value:.4f}, groups={group}, {kernel_count} kernels)")
        else:
            dense.append(f"{name!r} ({value:.4f}, {kernel_count} kernels)")
    reasons = []
    if grouped:
        reasons.append(
            f"grouped/depthwise layer(s) {', '.join(grouped)}: with groups each output "
            "filter has only C_in / groups kernels, so the layer holds far fewer kernels "
            "than a dense layer of its width, and torchconvquality's normaliser, fitted "
            "to random dense layers, is below the entropy such few kernels reach"
        )
    if dense:
        reasons.append(
            f"layer(s) {', '.join(dense)}: the normaliser is a fit to random kernels, "
            "below the entropy of these kernels"
        )
    warnings.warn(
        "normalised diversity exceeds 1 in " + "; ".join(reasons) + ". Compare such layers "
        "by their raw entropy (normalize=False) or among layers of the same kind.",
        FilterStatsWarning,
        stacklevel=3,
    )


def _single(values: Tensor, is_single: bool) -> Tensor:
    return values[0] if is_single else values


# ---------------------------------------------------------------- public metrics


def sparsity(
    filters: FilterInput,
    *,
    eps: float = 0.01,
    definition: Definition = "paper",
    strict: bool | None = None,
    nan_policy: NanPolicy = "propagate",
) -> Tensor:
    r"""Fraction of sparse kernels in each layer.

    A kernel :math:`f` (one ``kH x kW`` slice of the weight) is sparse when
    :math:`\max|f| \le \epsilon \max|W|`, with :math:`W` the whole layer (paper);
    torchconvquality uses a strict ``<``. An all-zero layer has sparsity 1.

    Args:
        filters: One weight ``(C_out, C_in / groups, *kernel)``, a
            [`FilterSet`][filterstats.FilterSet], a sequence of weights, or a model
            (resolved by [`extract_filters`][filterstats.extract_filters]: its 3x3
            layers).
        eps: Threshold as a fraction of the layer's largest |weight|, in [0, 1).
        definition: ``"paper"`` (``<=``) or ``"torchconvquality"`` (``<``).
        strict: Override the comparison of ``definition``.
        nan_policy: Non-finite weights: ``"propagate"`` (NaN for that layer),
            ``"raise"`` (ValueError naming the layers) or ``"omit"`` (leave out the
            kernels holding NaN/inf).

    Returns:
        Values in [0, 1], float64: shape ``()`` for one weight, ``(L,)`` otherwise.

    Examples:
        >>> import torch, filterstats as fs
        >>> w = torch.randn(8, 4, 3, 3)
        >>> w[0] = 0  # four dead kernels out of 32
        >>> fs.sparsity(w)
        tensor(0.1250, dtype=torch.float64)
    """
    eps = check_eps(eps)
    settings = DiversitySettings.preset(definition, strict=strict)
    check_choice("nan_policy", nan_policy, _NAN_POLICIES)
    weights, names, single = _as_layers(filters)
    first = _layer_pass(weights, eps, settings.strict, nan_policy)
    _check_nan_policy(names, first, nan_policy)
    values = _finalize(_sparsity_values(first), first, nan_policy, dead_is_nan=False)
    if names and nan_policy != "raise":
        _warn_nonfinite(names, first.finite.tolist(), nan_policy, stacklevel=3)
    return _single(values, single)


def diversity(
    filters: FilterInput,
    *,
    definition: Definition = "paper",
    eps: float = 0.01,
    scale_filters: bool | None = None,
    drop_sparse: bool | None = None,
    normalize: bool | None = None,
    strict: bool | None = None,
    nan_policy: NanPolicy = "propagate",
    chunk_bytes: int = kernels.DEFAULT_CHUNK_BYTES,
) -> Tensor:
    r"""Variance entropy of each layer's kernels (base 10).

    The kernels are flattened to vectors of length :math:`K = kH \cdot kW`, centred,
    and the explained-variance ratios :math:`p_j` of their principal components give
    :math:`H = -\sum_j p_j \log_{10} p_j \in [0, \log_{10} K]` (0.954 for 3x3): 0 when
    all kernels lie on one line, maximal when their variance is spread evenly.

    ``definition="paper"``: each kernel is first divided by its own largest |value|
    and sparse kernels are dropped. ``definition="torchconvquality"``: raw kernels,
    all kept. ``normalize=True`` divides by torchconvquality's fitted threshold of the
    kernel count (values then lie roughly in [0, 1]).

    Degenerate layers: fewer than two kernels counted, or an all-zero layer, give NaN
    (with a [`FilterStatsWarning`][filterstats.FilterStatsWarning] for all-zero
    layers); kernels without variance (all identical) give 0.

    Args:
        filters: One weight ``(C_out, C_in / groups, *kernel)``, a
            [`FilterSet`][filterstats.FilterSet], a sequence of weights, or a model
            (resolved by [`extract_filters`][filterstats.extract_filters]: its 3x3
            layers).
        definition: ``"paper"`` or ``"torchconvquality"``; sets the defaults below.
        eps: Sparsity threshold for ``drop_sparse``, fraction of the layer's max.
        scale_filters: Divide each kernel by its own largest |value| first.
        drop_sparse: Leave out sparse kernels (the "clean" variant).
        normalize: Divide by torchconvquality's threshold function of the count.
        strict: Sparse is ``<`` instead of ``<=``.
        nan_policy: ``"propagate"``, ``"raise"`` or ``"omit"``; see
            [`sparsity`][filterstats.sparsity].
        chunk_bytes: Working memory per chunk of kernels.

    Returns:
        Entropies, float64: shape ``()`` for one weight, ``(L,)`` otherwise.

    Examples:
        >>> import torch, filterstats as fs
        >>> fs.diversity(torch.randn(64, 64, 3, 3)) > 0.9  # isotropic noise: near log10(9)
        tensor(True)
    """
    eps = check_eps(eps)
    check_choice("nan_policy", nan_policy, _NAN_POLICIES)
    settings = DiversitySettings.preset(
        definition,
        scale_filters=scale_filters,
        drop_sparse=drop_sparse,
        normalize=normalize,
        strict=strict,
    )
    weights, names, single, groups = _as_grouped_layers(filters)
    variant = (settings.scale_filters, settings.drop_sparse)
    first = _layer_pass(weights, eps, settings.strict, nan_policy, [variant], chunk_bytes)
    _check_nan_policy(names, first, nan_policy)
    device = first.layer_max.device
    (values,) = _entropies(first.moments, device)
    if settings.normalize:
        values = _normalized(values, first.moments[0], device)
    values = _finalize(values, first, nan_policy, dead_is_nan=True)
    _warn_degenerate(names, weights, first, "diversity", nan_policy)
    if settings.normalize:
        _warn_normalized_above_one(names, weights, groups, values)
    return _single(values, single)


def orthogonality(
    filters: FilterInput,
    *,
    nan_policy: NanPolicy = "propagate",
    chunk_bytes: int = kernels.DEFAULT_CHUNK_BYTES,
) -> Tensor:
    r"""How orthogonal each layer's output filters are to each other.

    The ``C_out`` filters are flattened to vectors of length ``C_in / groups * kH * kW``
    and L2-normalised (:math:`\hat w_i`); then
    :math:`1 - \frac{1}{n(n-1)} \sum_{i \ne j} |\hat w_i \cdot \hat w_j|` with
    :math:`n = C_\text{out}`: 1 for mutually orthogonal filters, 0 for parallel ones.
    An all-zero filter counts as orthogonal to every other (the references add 1 on
    its diagonal instead). A single-filter or all-zero layer gives NaN with a
    [`FilterStatsWarning`][filterstats.FilterStatsWarning].

    Args:
        filters: One weight ``(C_out, C_in / groups, *kernel)``, a
            [`FilterSet`][filterstats.FilterSet], a sequence of weights, or a model
            (resolved by [`extract_filters`][filterstats.extract_filters]: its 3x3
            layers).
        nan_policy: ``"propagate"``, ``"raise"`` or ``"omit"`` (leave out output
            filters holding NaN/inf).
        chunk_bytes: Working memory of one block of the Gram matrix; bounds peak
            memory on the largest layers.

    Returns:
        Values in [0, 1], float64: shape ``()`` for one weight, ``(L,)`` otherwise.

    Examples:
        >>> import torch, filterstats as fs
        >>> eye = torch.eye(9).reshape(9, 1, 3, 3)  # 9 orthonormal filters
        >>> fs.orthogonality(eye)
        tensor(1., dtype=torch.float64)
    """
    check_choice("nan_policy", nan_policy, _NAN_POLICIES)
    weights, names, single = _as_layers(filters)
    first = _layer_pass(weights, 0.0, False, nan_policy, None, chunk_bytes, count_sparse=False)
    _check_nan_policy(names, first, nan_policy)
    values = _orthogonality_values(weights, first, nan_policy, chunk_bytes)
    values = _finalize(values, first, nan_policy, dead_is_nan=True)
    _warn_degenerate(names, weights, first, "orthogonality", nan_policy)
    return _single(values, single)


def frequency_profile(
    filters: FilterInput,
    *,
    eps: float = 0.01,
    definition: Definition = "paper",
    drop_sparse: bool | None = None,
    strict: bool | None = None,
    nan_policy: NanPolicy = "propagate",
    chunk_bytes: int = kernels.DEFAULT_CHUNK_BYTES,
) -> Tensor | tuple[Tensor, ...]:
    r"""The kernels' summed energy at each 2-D (n-D) DCT-II frequency, per layer.

    Each kernel :math:`X` (one ``kH x kW`` slice of the weight, raw, not scaled) is
    written in the orthonormal DCT-II basis, :math:`\hat X = C_h X C_w^\top`
    (``scipy.fft.dctn(X, norm="ortho")``), and the layer's energy at frequency
    :math:`(u, v)` is :math:`E_{uv} = \sum_\text{kernels} \hat X_{uv}^2`. The basis
    is orthonormal, so :math:`\sum_{uv} E_{uv} = \sum \lVert X \rVert^2` (Parseval).
    ``E / E.sum()`` are the shares whose band sums are the ``freq_dc``, ``freq_low``
    and ``freq_high`` columns of [`measure`][filterstats.measure] (bands:
    [`frequency_bands`][filterstats.kernels.frequency_bands]).

    Sparse kernels are left out as ``diversity`` leaves them out: under
    ``definition="paper"`` (``drop_sparse``), not under ``"torchconvquality"``. An
    all-zero layer gives NaN with a [`FilterStatsWarning`][filterstats.FilterStatsWarning].

    Args:
        filters: One weight ``(C_out, C_in / groups, *kernel)``, a
            [`FilterSet`][filterstats.FilterSet], a sequence of weights, or a model
            (resolved by [`extract_filters`][filterstats.extract_filters]: its 3x3
            layers).
        eps: Sparsity threshold, fraction of the layer's largest |weight|.
        definition: ``"paper"`` or ``"torchconvquality"``; sets ``drop_sparse`` and
            ``strict``.
        drop_sparse: Override: leave out the sparse kernels.
        strict: Override: sparse is ``<`` instead of ``<=``.
        nan_policy: ``"propagate"``, ``"raise"`` or ``"omit"``; see
            [`sparsity`][filterstats.sparsity].
        chunk_bytes: Working memory per chunk.

    Returns:
        float64 energies of shape ``kernel_size`` (index ``(0, 0)``: DC): one tensor
        for one weight, a tuple of them (one per layer) otherwise.

    Examples:
        >>> import torch, filterstats as fs
        >>> energy = fs.frequency_profile(torch.ones(4, 2, 3, 3))  # constant kernels
        >>> float(energy[0, 0] / energy.sum())
        1.0
    """
    eps = check_eps(eps)
    check_choice("nan_policy", nan_policy, _NAN_POLICIES)
    settings = DiversitySettings.preset(definition, drop_sparse=drop_sparse, strict=strict)
    weights, names, single = _as_layers(filters)
    variant = (False, settings.drop_sparse)
    first = _layer_pass(weights, eps, settings.strict, nan_policy, [variant], chunk_bytes)
    _check_nan_policy(names, first, nan_policy)
    device = first.layer_max.device
    energies, _ = _frequency_values(first.moments[0], weights, device)
    ok = _finalize(torch.ones_like(first.layer_max), first, nan_policy, dead_is_nan=True) == 1.0
    result = tuple(torch.where(ok[i], e, torch.nan) for i, e in enumerate(energies))
    _warn_degenerate(names, weights, first, "the frequency profile", nan_policy)
    return result[0] if single else result


def measure(
    filters: FilterInput,
    *,
    eps: float = 0.01,
    definition: Definition = "paper",
    scale_filters: bool | None = None,
    normalize: bool | None = None,
    strict: bool | None = None,
    nan_policy: NanPolicy = "propagate",
    chunk_bytes: int = kernels.DEFAULT_CHUNK_BYTES,
    frequency: bool = True,
) -> LayerMetrics:
    """Every per-layer metric in one batched pass over the weights.

    Shares the kernel maxima between sparsity and diversity, runs one batched
    eigen-solve per kernel size, and synchronises with the host once at the end
    (for warnings). This is what [`analyze`][filterstats.analyze] uses.

    The frequency profile (``freq_dc``, ``freq_low``, ``freq_high`` and the full
    per-frequency energies in ``frequency_energy``) comes from the same pass: one
    more moment set of the kernels (raw, sparse ones left out as ``diversity``
    leaves them out) and one batched product per kernel shape. Group-aware
    orthogonality (``group_orthogonality``) uses each layer's ``groups`` (a bare
    weight tensor is a dense layer).

    Args:
        filters: A [`FilterSet`][filterstats.FilterSet], a weight, a sequence of
            weights, or a model (resolved by
            [`extract_filters`][filterstats.extract_filters]: its 3x3 layers).
        eps: Sparsity threshold, fraction of the layer's largest |weight|.
        definition: ``"paper"`` or ``"torchconvquality"``.
        scale_filters: Override of the definition's kernel scaling for ``diversity``.
        normalize: Override: normalise ``diversity`` and ``diversity_clean``.
        strict: Override: sparse is ``<`` instead of ``<=``.
        nan_policy: ``"propagate"``, ``"raise"`` or ``"omit"``.
        chunk_bytes: Working memory per chunk.
        frequency: Compute the frequency profile (``False``: the pass without it).

    Returns:
        A [`LayerMetrics`][filterstats.metrics.LayerMetrics] with ``(L,)`` tensors.
    """
    eps = check_eps(eps)
    check_choice("nan_policy", nan_policy, _NAN_POLICIES)
    settings = DiversitySettings.preset(
        definition, scale_filters=scale_filters, normalize=normalize, strict=strict
    )
    weights, names, _, groups = _as_grouped_layers(filters)
    # Sparsity and every entropy variant from one read of the kernels (paper:
    # scaled/clean and raw; torchconvquality: clean and raw, also its main value),
    # and the raw kernels of the definition for the frequency profile.
    wanted: list[_Variant] = [(settings.scale_filters, True)]
    if not settings.drop_sparse:
        wanted.append((settings.scale_filters, False))
    wanted.append((False, False))
    spectral: _Variant = (False, settings.drop_sparse)
    if frequency:
        wanted.append(spectral)
    variants = list(dict.fromkeys(wanted))
    first = _layer_pass(weights, eps, settings.strict, nan_policy, variants, chunk_bytes)
    _check_nan_policy(names, first, nan_policy)
    device = first.layer_max.device
    # Every variant in one eigen-solve (per kernel size).
    solved = dict(zip(variants, _entropies(first.moments, device)))

    def entropy(variant: _Variant, norm: bool) -> Tensor:
        values = solved[variant]
        if norm:
            values = _normalized(values, first.moments[variants.index(variant)], device)
        return _finalize(values, first, nan_policy, dead_is_nan=True)

    clean = entropy((settings.scale_filters, True), settings.normalize)
    main = (
        clean
        if settings.drop_sparse
        else entropy((settings.scale_filters, False), settings.normalize)
    )
    raw = entropy((False, False), False)
    prepared = _gram_inputs(weights, first, nan_policy, chunk_bytes)
    ortho_values = _orthogonality_values(weights, first, nan_policy, chunk_bytes, prepared)
    ortho = _finalize(ortho_values, first, nan_policy, dead_is_nan=True)
    group_ortho = _finalize(
        _group_orthogonality_values(prepared, groups, ortho_values, chunk_bytes),
        first,
        nan_policy,
        dead_is_nan=True,
    )
    extra: dict[str, Tensor] = {}
    energies: tuple[Tensor, ...] = ()
    if frequency:
        per_frequency, shares = _frequency_values(
            first.moments[variants.index(spectral)], weights, device
        )
        shares = _finalize(shares, first, nan_policy, dead_is_nan=True)
        extra = {"freq_dc": shares[0], "freq_low": shares[1], "freq_high": shares[2]}
        # NaN where the shares are (all-zero layers; NaN/inf weights under "propagate").
        ok = _finalize(torch.ones_like(first.layer_max), first, nan_policy, dead_is_nan=True)
        ok = ok == 1.0
        energies = tuple(torch.where(ok[i], e, torch.nan) for i, e in enumerate(per_frequency))
    n_filters = first.n_kernels
    n_sparse = first.n_sparse
    _warn_degenerate(names, weights, first, "diversity and orthogonality", nan_policy)
    if settings.normalize:
        _warn_normalized_above_one(names, weights, groups, main)
    return LayerMetrics(
        names=tuple(names),
        n_filters=n_filters,
        n_nonsparse=first.n_valid - n_sparse if nan_policy == "omit" else n_filters - n_sparse,
        out_channels=torch.tensor(
            [float(w.shape[0]) for w in weights], dtype=torch.float64, device=device
        ),
        metrics={
            "sparsity": _finalize(_sparsity_values(first), first, nan_policy, dead_is_nan=False),
            "diversity": main,
            "diversity_clean": clean,
            "entropy_raw": raw,
            "orthogonality": ortho,
            "group_orthogonality": group_ortho,
            **extra,
        },
        eps=eps,
        settings=settings,
        definition=definition,
        frequency_energy=energies,
    )
