"""torchconvquality's functions, computed by filterstats: a drop-in replacement.

torchconvquality 0.3.0 (Gavrikov & Keuper; the metrics of "CNN Filter DB", CVPR
2022, and "Adversarial Robustness through the Lens of Convolutional Filters", CVPR-W
2022) returns, for every ``torch.nn.Conv2d`` with a 3x3 kernel, a dict of seven
numbers. This module has the same three functions, with the same signatures and the
same dicts (keys, key order, value types), so that existing code switches by changing
one import::

    # from torchconvquality import measure_quality
    from filterstats.compat.torchconvquality import measure_quality

    quality = measure_quality(model)  # {"layer1.0.conv1": {"n": 4096, "sparsity": ...}}

All layers are measured in one batched pass of
[`filterstats.measure`][filterstats.measure] with ``definition="torchconvquality"``
(on the weights' device, float64 moments), not one layer after the other. The values
agree with the package to 1e-6 except on degenerate layers (all-zero layers, zero
output filters, a single output filter, NaN/inf weights, exactly zero eigenvalues),
where filterstats gives its documented values: NaN with a
[`FilterStatsWarning`][filterstats.FilterStatsWarning] instead of the package's
artefacts. The documentation page "Coming from torchconvquality" lists every
difference.

The package measures only modules whose type is exactly ``torch.nn.Conv2d`` with a
``(3, 3)`` kernel and silently skips the rest (subclasses such as timm's
``Conv2dSame`` or a parametrised convolution, ``ConvTranspose2d``, quantised and
TorchScript convolutions). ``measure_quality(model, include_skipped=True)`` measures
those too (every 3x3 convolution [`extract_filters`][filterstats.extract_filters]
finds).

The output is a plain ``dict``, unlike the rest of filterstats, because that is the
package's contract. For tables, depth bins and provenance use
[`filterstats.analyze`][filterstats.analyze].
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from filterstats import kernels
from filterstats._warnings import FilterStatsWarning
from filterstats.layers import ConvLayer
from filterstats.metrics import measure
from filterstats.resolve import extract_filters

__all__ = ["KEYS", "measure_conv_weight_quality", "measure_layer_quality", "measure_quality"]

#: The keys of one layer's dict, in the package's order.
KEYS: tuple[str, ...] = (
    "n",
    "sparsity",
    "variance_entropy",
    "variance_entropy_norm",
    "variance_entropy_clean",
    "variance_entropy_clean_norm",
    "orthogonality",
)

#: Keyword arguments the package's functions read; it silently ignores all others.
_PACKAGE_KWARGS = ("sparsity_eps",)

#: Module-path segments of wrappers that extract_filters leaves out of layer names.
_WRAPPER_SEGMENTS = frozenset({"module", "_orig_mod"})


def measure_quality(
    model: nn.Module, *, include_skipped: bool = False, **kwargs: Any
) -> dict[str, dict[str, float]]:
    """Quality metrics of every 3x3 ``torch.nn.Conv2d`` of a model, as torchconvquality.

    Same call and result as ``torchconvquality.measure_quality(model, **kwargs)``:
    one entry per module of ``model.named_modules()`` whose type is exactly
    ``torch.nn.Conv2d`` with ``kernel_size == (3, 3)``, keyed by its module path, in
    that order. Each entry holds, with ``W`` the weight viewed as ``N = C_out *
    C_in / groups`` kernels of 9 values:

    * ``n``: ``N`` (int);
    * ``sparsity``: fraction of kernels whose every ``|w| < sparsity_eps * max|W|``;
    * ``variance_entropy``: base-10 entropy of the explained-variance ratios of the
      centred raw kernels, in [0, log10 9]; ``variance_entropy_norm``: divided by
      the package's fitted threshold of ``N`` (``kernels.entropy_threshold``);
    * ``variance_entropy_clean`` and ``variance_entropy_clean_norm``: the same over
      the non-sparse kernels only (the threshold of their count);
    * ``orthogonality``: 1 minus the mean ``|cos|`` between distinct output filters.

    The two ``*_norm`` values are ``numpy.float64``, the others Python floats, as in
    the package. The model is not changed.

    Args:
        model: Any ``nn.Module``.
        include_skipped: Also measure the 3x3 convolutions the package skips
            without a word (``Conv2d`` subclasses, parametrised or transposed
            convolutions, quantised, TorchScript and registered custom ones), named
            as [`extract_filters`][filterstats.extract_filters] names them (wrapper
            prefixes such as ``module.`` left out), in model order.
        **kwargs: ``sparsity_eps`` (default 0.01), the sparsity threshold as a
            fraction of the layer's largest |weight|. The package ignores any other
            keyword; so does this function, with a
            [`FilterStatsWarning`][filterstats.FilterStatsWarning] naming them.

    Returns:
        ``{module_path: {key: value}}`` with the keys of ``KEYS``; ``{}`` (and a
        warning) when the model has no such convolution.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``sparsity_eps`` is outside [0, 1), or a selected layer has no
            values (meta device).

    Examples:
        >>> import torch
        >>> from filterstats.compat.torchconvquality import measure_quality
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 1))
        >>> quality = measure_quality(net)
        >>> list(quality), list(quality["0"])[:3]
        (['0'], ['n', 'sparsity', 'variance_entropy'])
    """
    eps = _sparsity_eps(kwargs, "measure_quality")
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"`model` must be a torch.nn.Module, got {type(model).__name__}. For one "
            "layer use measure_layer_quality(conv), for a weight measure_conv_weight_quality(w)."
        )
    layers = [
        _layer(path, module.weight, type(module).__name__, module.groups)
        for path, module in model.named_modules()
        if type(module) is nn.Conv2d and module.kernel_size == (3, 3)
    ]
    if include_skipped:
        layers = _in_model_order(model, layers + _skipped_by_package(model, layers))
    elif not layers:
        warnings.warn(
            f"no torch.nn.Conv2d with a 3x3 kernel in {type(model).__name__}: "
            "torchconvquality measures only those (not subclasses or other convolution "
            "types) and returns {}; pass include_skipped=True to measure every 3x3 "
            "convolution filterstats finds.",
            FilterStatsWarning,
            stacklevel=2,
        )
    return _quality(layers, eps)


def measure_layer_quality(conv_layer: nn.Module, **kwargs: Any) -> dict[str, float]:
    """Quality metrics of one convolution module, as ``torchconvquality.measure_layer_quality``.

    Args:
        conv_layer: A module with a 4-D ``weight`` ``(C_out, C_in / groups, kH, kW)``
            (any kernel size, as in the package).
        **kwargs: ``sparsity_eps`` (default 0.01); other keywords are ignored with a
            warning, as the package ignores them silently.

    Returns:
        ``{key: value}`` with the keys of ``KEYS`` (see
        [`measure_quality`][filterstats.compat.torchconvquality.measure_quality]).

    Raises:
        TypeError: ``conv_layer`` has no tensor ``weight``.
        ValueError: The weight is not 4-D, or ``sparsity_eps`` is outside [0, 1).
    """
    eps = _sparsity_eps(kwargs, "measure_layer_quality")
    weight = getattr(conv_layer, "weight", None)
    if not isinstance(weight, Tensor):
        raise TypeError(
            f"`conv_layer` must be a convolution module with a `weight` tensor, got "
            f"{type(conv_layer).__name__}. For a bare weight use measure_conv_weight_quality(w)."
        )
    groups = getattr(conv_layer, "groups", 1)
    name = type(conv_layer).__name__
    layer = _layer("conv_layer", weight, name, groups if isinstance(groups, int) else 1)
    return _quality([layer], eps)["conv_layer"]


def measure_conv_weight_quality(w: Tensor, **kwargs: Any) -> dict[str, float]:
    """Quality metrics of one weight, as ``torchconvquality.measure_conv_weight_quality``.

    Args:
        w: Weight ``(C_out, C_in / groups, kH, kW)``, on any device and float dtype.
        **kwargs: ``sparsity_eps`` (default 0.01); other keywords are ignored with a
            warning, as the package ignores them silently.

    Returns:
        ``{key: value}`` with the keys of ``KEYS``.

    Raises:
        TypeError: ``w`` is not a floating-point tensor.
        ValueError: ``w`` is not 4-D, or ``sparsity_eps`` is outside [0, 1).

    Examples:
        >>> import torch
        >>> from filterstats.compat.torchconvquality import measure_conv_weight_quality
        >>> eye = torch.eye(9).reshape(9, 1, 3, 3)  # 9 orthonormal filters
        >>> measure_conv_weight_quality(eye)["orthogonality"]
        1.0
    """
    eps = _sparsity_eps(kwargs, "measure_conv_weight_quality")
    if not isinstance(w, Tensor):
        raise TypeError(
            f"`w` must be a weight tensor (C_out, C_in, kH, kW), got {type(w).__name__}."
        )
    return _quality([_layer("w", w, "tensor", 1)], eps)["w"]


# --------------------------------------------------------------------------- internals


def _sparsity_eps(kwargs: dict[str, Any], function: str) -> float:
    eps = kwargs.pop("sparsity_eps", 0.01)
    if kwargs:
        warnings.warn(
            f"{function}: ignored keyword argument(s) {sorted(kwargs)}; torchconvquality "
            f"reads only {list(_PACKAGE_KWARGS)} and ignores the rest, as this does.",
            FilterStatsWarning,
            stacklevel=3,
        )
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"`sparsity_eps` must be a number in [0, 1), got {eps!r}.")
    return float(eps)


def _layer(name: str, weight: Tensor, module_type: str, groups: int) -> ConvLayer:
    if weight.ndim != 4:
        raise ValueError(
            f"layer {name!r}: the weight must be 4-D (C_out, C_in / groups, kH, kW) as "
            f"torchconvquality requires, got shape {tuple(weight.shape)}. For other "
            "convolutions use filterstats.analyze."
        )
    if weight.device.type == "meta":
        raise ValueError(
            f"layer {name!r} is on the meta device and holds no values; load or "
            "materialise the weights first."
        )
    if not weight.is_floating_point():
        raise TypeError(
            f"layer {name!r}: the weight must be floating point, got {weight.dtype}; "
            "dequantize it first, or use include_skipped=True (which dequantises)."
        )
    weight = weight.detach()
    return ConvLayer(
        name=name,
        module_type=module_type,
        weight=weight,
        in_channels=int(weight.shape[1]) * groups,
        out_channels=int(weight.shape[0]),
        groups=groups,
        kernel_size=(int(weight.shape[2]), int(weight.shape[3])),
    )


def _filterstats_name(path: str) -> str:
    """A module path as extract_filters names it: wrapper segments left out."""
    segments = path.split(".")
    kept = [s for s in segments[:-1] if s not in _WRAPPER_SEGMENTS] + segments[-1:]
    return ".".join(kept)


def _skipped_by_package(model: nn.Module, taken: list[ConvLayer]) -> list[ConvLayer]:
    """The 3x3 convolutions extract_filters finds that the package does not measure."""
    # Registration depth: no tracing, and (as the package) no graph-based skips.
    found = extract_filters(model, kernel_size=(3, 3), depth="registration")
    pointers = {layer.weight.data_ptr() for layer in taken}
    names = {_filterstats_name(layer.name) for layer in taken}
    return [
        layer
        for layer in found
        if layer.weight.data_ptr() not in pointers and layer.name not in names
    ]


def _in_model_order(model: nn.Module, layers: list[ConvLayer]) -> list[ConvLayer]:
    position = {path: index for index, (path, _) in enumerate(model.named_modules())}
    return sorted(layers, key=lambda layer: position.get(layer.name, len(position)))


def _quality(layers: list[ConvLayer], eps: float) -> dict[str, dict[str, Any]]:
    """Every layer's dict from one batched ``measure`` and one host transfer."""
    if not layers:
        return {}
    # The package has no frequency profile: the pass without it.
    metrics = measure(layers, eps=eps, definition="torchconvquality", frequency=False)
    # The package divides each entropy by its fitted threshold of the kernel count it
    # used: all kernels for the plain value, the non-sparse ones for the clean value.
    norm = metrics.diversity / kernels.entropy_threshold(metrics.n_filters)
    clean_norm = metrics.diversity_clean / kernels.entropy_threshold(metrics.n_nonsparse)
    columns = torch.stack(
        [
            metrics.n_filters,
            metrics.sparsity,
            metrics.diversity,
            norm,
            metrics.diversity_clean,
            clean_norm,
            metrics.orthogonality,
        ]
    ).tolist()
    result: dict[str, dict[str, Any]] = {}
    for index, layer in enumerate(layers):
        n, sparsity, entropy, entropy_norm, clean, clean_entropy_norm, ortho = (
            column[index] for column in columns
        )
        result[layer.name] = {
            "n": int(n),
            "sparsity": sparsity,
            "variance_entropy": entropy,
            "variance_entropy_norm": np.float64(entropy_norm),
            "variance_entropy_clean": clean,
            "variance_entropy_clean_norm": np.float64(clean_entropy_norm),
            "orthogonality": ortho,
        }
    return result
