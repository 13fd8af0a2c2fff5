"""``analyze``: one call from a model to its per-layer filter statistics."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from filterstats._checks import NanPolicy
from filterstats.extract import extract_filters
from filterstats.layers import FilterSet
from filterstats.metrics import Definition, measure
from filterstats.results import AnalysisParams, FilterReport, LayerRow

__all__ = ["analyze"]


def _kernel_text(kernel: tuple[int, ...] | None) -> str:
    return "x".join(str(k) for k in kernel) if kernel else ""


def _selection_text(kernel_size: int | tuple[int, ...] | None) -> str:
    if kernel_size is None:
        return "all"
    if isinstance(kernel_size, int):
        return f"{kernel_size}x..."
    return _kernel_text(tuple(kernel_size))


def _resolve(model: Any, kernel_size: Any, example_inputs: Any, depth: str) -> FilterSet:
    if isinstance(model, FilterSet):
        return model
    if isinstance(model, str):
        from filterstats.zoo.specs import load_model  # lazy: zoo extras load on demand

        model = load_model(model)
    if isinstance(model, (nn.Module, Mapping)):
        return extract_filters(
            model, kernel_size=kernel_size, example_inputs=example_inputs, depth=depth
        )
    raise TypeError(
        f"`model` must be an nn.Module, a state dict, a FilterSet or a model spec string, "
        f"got {type(model).__name__}."
    )


def analyze(
    model: nn.Module | Mapping[str, Any] | FilterSet | str,
    *,
    label: str | None = None,
    kernel_size: int | tuple[int, ...] | None = (3, 3),
    eps: float = 0.01,
    definition: Definition = "paper",
    normalize: bool | None = None,
    nan_policy: NanPolicy = "propagate",
    example_inputs: Any = None,
    depth: str = "auto",
    device: str | torch.device | None = None,
) -> FilterReport:
    """Per-layer sparsity, diversity and orthogonality of a model, as a table.

    Extracts every convolution (see
    [`extract_filters`][filterstats.extract_filters]) and measures all selected
    layers in one batched pass ([`measure`][filterstats.measure]). Skipped
    convolutions appear as rows with ``status="skipped"`` and their reason.

    Args:
        model: A module, a state dict, a [`FilterSet`][filterstats.FilterSet], or a
            model spec such as ``"demo:robust"`` or ``"path/to/checkpoint.pt"``.
        label: Model label for the ``model`` column; defaults to the class name.
        kernel_size: Kernel size to select (``(3, 3)``: the paper), or ``None`` (all).
        eps: Sparsity threshold, fraction of each layer's largest |weight|.
        definition: ``"paper"`` or ``"torchconvquality"``.
        normalize: Divide diversity by torchconvquality's threshold function.
        nan_policy: ``"propagate"``, ``"raise"`` or ``"omit"`` for NaN/inf weights.
        example_inputs: Input for a forward pass when the model does not trace.
        depth: How to get depths: ``"auto"``, ``"fx"``, ``"forward"``, ``"registration"``.
        device: Compute on this device (weights are copied there); default: where
            the weights are. The model itself is never moved.

    Returns:
        A frozen [`FilterReport`][filterstats.FilterReport]; print it for a table,
        ``.to_pandas()`` for a DataFrame, ``.to_csv(path)`` to save.

    Examples:
        >>> import torch, filterstats as fs
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.Conv2d(16, 16, 3))
        >>> report = fs.analyze(net, label="tiny")
        >>> [row.layer for row in report]
        ['0', '1']
    """
    filters = _resolve(model, kernel_size, example_inputs, depth)
    name = label or filters.source or "model"
    layers = list(filters)
    # ConvLayers, not bare weights: warnings and nan_policy="raise" errors name the layers.
    inputs = [layer if device is None else replace(layer, weight=layer.weight.to(device))
              for layer in layers]  # fmt: skip
    metrics = measure(inputs, eps=eps, definition=definition, normalize=normalize,
                      nan_policy=nan_policy)  # fmt: skip
    keys = ("n_nonsparse", "sparsity", "diversity", "diversity_clean", "entropy_raw",
            "orthogonality")  # fmt: skip
    # One host transfer for every column (float64 all).
    stacked = torch.stack([getattr(metrics, key).to(torch.float64) for key in keys]).cpu()
    columns = dict(zip(keys, stacked.tolist()))
    measured = {}
    for i, layer in enumerate(layers):
        measured[layer.name] = LayerRow(
            model=name,
            layer=layer.name,
            module_type=layer.module_type,
            depth=-1 if layer.depth is None else layer.depth,
            conv_depth=-1 if layer.conv_depth is None else layer.conv_depth,
            conv_depth_norm=math.nan if layer.conv_depth_norm is None else layer.conv_depth_norm,
            in_channels=layer.in_channels,
            out_channels=layer.out_channels,
            groups=layer.groups or 0,
            kernel_size=_kernel_text(layer.kernel_size),
            n_filters=layer.n_filters,
            n_nonsparse=int(columns["n_nonsparse"][i]),
            sparsity=columns["sparsity"][i],
            diversity=columns["diversity"][i],
            diversity_clean=columns["diversity_clean"][i],
            entropy_raw=columns["entropy_raw"][i],
            orthogonality=columns["orthogonality"][i],
            shared_with=";".join(layer.shared_with),
        )
    skipped = [
        LayerRow(model=name, layer=s.name, module_type=s.module_type, status="skipped",
                 reason=s.reason)
        for s in filters.skipped
    ]  # fmt: skip
    from filterstats._version import __version__

    settings = metrics.settings
    params = AnalysisParams(
        eps=metrics.eps,
        kernel_size=_selection_text(kernel_size),
        definition=definition,
        scale_filters=settings.scale_filters,
        drop_sparse=settings.drop_sparse,
        normalize=settings.normalize,
        strict=settings.strict,
        nan_policy=nan_policy,
        depth_method=filters.depth_method,
        version=__version__,
    )
    return FilterReport(tuple(measured.values()) + tuple(skipped), params)
