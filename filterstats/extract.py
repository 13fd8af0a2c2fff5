"""Find every convolution of a module or state dict and read its effective weight, read-only.

The two walks behind [`extract_filters`][filterstats.extract_filters] (the one
resolver, in ``filterstats.resolve``): ``filters_from_module`` and
``filters_from_state_dict`` return every convolution of every kernel size; the
resolver then selects the kernel size with ``FilterSet.select``.

Nothing here changes the model: no ``.to()``, ``.eval()``, ``.requires_grad_()``;
weights are detached views of the parameters where possible. Parametrisations
(``torch.nn.utils.parametrize``, weight/spectral norm) are evaluated with their
``training`` flags temporarily False so that spectral norm runs no power iteration
(restored afterwards).
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.parameter import UninitializedParameter
from torch.nn.utils import parametrize

from filterstats._modes import eval_mode
from filterstats._torchscript import conv_calls
from filterstats._warnings import FilterStatsWarning
from filterstats.checkpoints import UnorderedStateDict, strip_wrapper_prefixes
from filterstats.depth import conv_depth_ranks, graph_depths
from filterstats.effective_weights import register_effective_weight, registered_getter
from filterstats.layers import ConvLayer, FilterSet, SkippedLayer, layer_name

__all__ = [
    "conv_modules",
    "filters_from_module",
    "filters_from_state_dict",
    "is_conv",
    "register_effective_weight",
    "shared_weights",
]

_SCRIPTED_CONVS = {
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
}  # fmt: skip
#: Where a LightningModule's class may live (it is recognised without importing Lightning).
_LIGHTNING_MODULES = ("lightning.pytorch.", "pytorch_lightning.", "lightning.")
#: Depth methods that see which convolutions forward calls, and the graph each reads.
_GRAPH_METHODS = {
    "fx": "the graph traced by fx",
    "forward": "the graph traced by forward",
    "torchscript": "its TorchScript graph",
}
#: Values compared to find equal (shared) weights before a full comparison.
_PROBES = 64


def _registered_getter(module: nn.Module) -> Callable[[Any], Tensor] | None:
    if type(module).__module__.startswith("timm.") and "filterstats.zoo.timm" not in sys.modules:
        # timm is already imported (the module is one of its classes): register the
        # getters of its weight-standardised convolutions.
        importlib.import_module("filterstats.zoo.timm")
    return registered_getter(module)


def _is_quantized_conv(module: nn.Module) -> bool:
    kind = type(module)
    return kind.__name__ in _SCRIPTED_CONVS | {"ConvReLU2d", "ConvReLU1d", "ConvReLU3d"} and (
        ".quantized" in kind.__module__
    )


def _is_scripted_conv(module: nn.Module) -> bool:
    return isinstance(module, torch.jit.ScriptModule) and (
        getattr(module, "original_name", "") in _SCRIPTED_CONVS
    )


def is_conv(module: nn.Module) -> bool:
    """Whether extraction treats ``module`` as a convolution.

    Args:
        module: Any module.

    Returns:
        ``True`` for ``_ConvNd`` subclasses, registered classes, quantised and
        TorchScript convolutions.
    """
    return (
        isinstance(module, _ConvNd)
        or _registered_getter(module) is not None
        or _is_quantized_conv(module)
        or _is_scripted_conv(module)
    )


def _is_lightning_module(model: nn.Module) -> bool:
    return any(
        cls.__name__ == "LightningModule" and cls.__module__.startswith(_LIGHTNING_MODULES)
        for cls in type(model).__mro__
    )


def _unwrap(model: nn.Module) -> nn.Module:
    """The network inside wrappers: DataParallel/DDP, torch.compile, a LightningModule.

    A LightningModule is unwrapped to the one child that holds all of its parameters
    and buffers (``self.model = ...``), as its checkpoints are (see
    ``filterstats.checkpoints.to_state_dict``); otherwise it is walked as it is.
    """
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        elif _is_lightning_module(model):
            holders = [child for child in model.children() if child.state_dict()]
            direct = [*model.parameters(recurse=False), *model.buffers(recurse=False)]
            if len(holders) != 1 or direct:
                return model
            model = holders[0]
        else:
            return model


def _effective_weight(module: nn.Module) -> Tensor:
    getter = _registered_getter(module)
    with torch.no_grad():
        if getter is not None:
            weight = getter(module)
        elif _is_quantized_conv(module):
            weight = module.weight().dequantize()  # type: ignore[operator]
        elif parametrize.is_parametrized(module, "weight"):
            # eval: spectral norm runs no power iteration (its buffers stay as they are).
            with eval_mode(module.parametrizations):  # type: ignore[arg-type]
                weight = module.weight  # type: ignore[assignment]
        else:
            weight = _hooked_weight(module)
    return weight.detach()


def _hooked_weight(module: nn.Module) -> Tensor:
    """Weight of old-style ``weight_norm``/``spectral_norm`` (hooks), else ``.weight``."""
    for hook in module._forward_pre_hooks.values():
        name = getattr(hook, "name", None)
        compute = getattr(hook, "compute_weight", None)
        if name == "weight" and compute is not None:
            if type(hook).__name__ == "SpectralNorm":
                return compute(module, do_power_iteration=False)  # type: ignore[no-any-return]
            return compute(module)  # type: ignore[no-any-return]
    return module.weight  # type: ignore[return-value]


def _as_tuple(value: Any, ndim: int) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value,) * ndim
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        return None


def _out_by_in(weight: Tensor, transposed: bool, groups: int) -> Tensor:
    """Transposed-conv weights ``(C_in, C_out / g, *k)`` as ``(C_out, C_in / g, *k)``."""
    if not transposed:
        return weight
    c_in, c_out_per_group = weight.shape[:2]
    kernel = weight.shape[2:]
    grouped = weight.reshape(groups, c_in // groups, c_out_per_group, *kernel)
    return grouped.transpose(1, 2).reshape(groups * c_out_per_group, c_in // groups, *kernel)


def _usable(weight: Tensor) -> tuple[Tensor, str]:
    """The weight as a float tensor (quantised ones dequantised), or why it is unusable."""
    if weight.device.type == "meta":
        return weight, "weights on the meta device (not materialised)"
    if weight.is_quantized:
        weight = weight.dequantize()
    if not weight.is_floating_point():
        return weight, f"{weight.dtype} weights without a scale: cannot dequantise"
    if weight.numel() == 0:
        return weight, f"weight has no elements (shape {tuple(weight.shape)})"
    return weight, ""


def _read_conv(name: str, module: nn.Module) -> ConvLayer | SkippedLayer:
    module_type = getattr(module, "original_name", None) if _is_scripted_conv(module) else None
    module_type = module_type or type(module).__name__
    # Not getattr(module, "weight"): on a parametrised module in training mode that
    # would run spectral norm's power iteration and change its buffers.
    raw = None if _is_scripted_conv(module) else module._parameters.get("weight")
    if isinstance(raw, UninitializedParameter):
        reason = "uninitialised lazy module: run a forward pass first"
        return SkippedLayer(name, module_type, reason)
    try:
        weight = _effective_weight(module)
    except Exception as error:
        return SkippedLayer(
            name, module_type, f"could not read its weight: {type(error).__name__}: {error}"
        )
    if not isinstance(weight, Tensor) or weight.ndim < 3:
        return SkippedLayer(name, module_type, "weight is not a convolution kernel tensor")
    weight, reason = _usable(weight)
    if _is_scripted_conv(module):
        groups, stride, transposed = _scripted_meta(module, module_type)
    else:
        transposed = bool(getattr(module, "transposed", False))
        groups = int(getattr(module, "groups", 1) or 1)
        stride = _as_tuple(getattr(module, "stride", None), weight.ndim - 2)
    if reason:  # what is known of the layer stays on its row: its shape is
        kernel = tuple(int(k) for k in weight.shape[2:])
        first, second = int(weight.shape[0]), int(weight.shape[1])
        if transposed and groups is None:  # which dimension is which is unknown
            return SkippedLayer(name, module_type, reason, kernel_size=kernel)
        if transposed:
            in_channels, out_channels = first, second * (groups or 1)
        else:  # groups unknown: the input channels of one group, as for state dicts
            in_channels, out_channels = second * (groups or 1), first
        return SkippedLayer(
            name, module_type, reason, in_channels=in_channels, out_channels=out_channels,
            groups=groups, kernel_size=kernel,
        )  # fmt: skip
    if groups is None and transposed:
        kernel = tuple(int(k) for k in weight.shape[2:])
        reason = (
            "transposed convolution whose groups are unknown (not in its TorchScript graph): "
            "its weight cannot be put in out x in order; pass the eager module"
        )
        return SkippedLayer(name, module_type, reason, kernel_size=kernel)
    weight = _out_by_in(weight, transposed, groups or 1)
    kernel = tuple(int(k) for k in weight.shape[2:])
    return ConvLayer(
        name=name,
        module_type=module_type,
        weight=weight,
        # Groups unknown: the input channels of one group, as for state dicts.
        in_channels=int(weight.shape[1] * (groups or 1)),
        out_channels=int(weight.shape[0]),
        groups=groups,
        kernel_size=kernel,
        stride=stride,
        transposed=transposed,
    )


def _scripted_meta(
    module: nn.Module, module_type: str
) -> tuple[int | None, tuple[int, ...] | None, bool]:
    """``(groups, stride, transposed)`` of a TorchScript convolution.

    Scripted convolutions keep their attributes; traced ones (``torch.jit.trace``,
    also after ``torch.jit.load``) keep none, so they are read from the arguments of
    the module's own convolution call in its graph. ``None`` when neither says (or
    its calls disagree): unknown, never a guess.
    """
    calls: list[Any] = []

    def agreed(field: str) -> Any:
        if not calls:
            try:
                found = conv_calls(module)  # type: ignore[arg-type]
            except Exception:  # no forward graph (a traced module forward never called)
                found = []
            calls.extend([call for call in found if call.path == ""] or [None])
        values = {getattr(call, field, None) for call in calls}
        return values.pop() if len(values) == 1 else None

    groups = getattr(module, "groups", None)
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        groups = agreed("groups")
    stride = getattr(module, "stride", None)
    stride = _as_tuple(stride, 0) if stride is not None else agreed("stride")
    transposed = getattr(module, "transposed", None)
    if not isinstance(transposed, bool):
        transposed = agreed("transposed")
    if not isinstance(transposed, bool):
        transposed = module_type.startswith("ConvTranspose")
    return groups, stride, transposed


def shared_weights(weights: Sequence[Tensor]) -> dict[int, int]:
    """Which weights are the same as an earlier one: the one rule for every input.

    A weight is shared with an earlier one when both are the same tensor storage
    (same data pointer, offset, shape and strides: tied parameters, a module
    registered twice, a state dict saved with ``torch.save``) or hold exactly equal
    values (tied weights written by a format that stores them twice, such as a
    cloned safetensors file). Weights whose values are all equal (e.g. all-zero
    layers) are not matched by value: two dead layers are not one layer.

    Args:
        weights: One weight per convolution, in model order.

    Returns:
        ``{index: index of the first weight it equals}`` for every later copy.
    """
    owner: dict[int, int] = {}
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for index, weight in enumerate(weights):
        groups[(tuple(weight.shape), weight.dtype, weight.device)].append(index)
    for members in groups.values():
        if len(members) < 2:
            continue
        size = weights[members[0]].numel()
        probe = torch.linspace(0, size - 1, min(_PROBES, size), device=weights[members[0]].device)
        # One host copy per shape group: a few values of each weight as its fingerprint.
        samples = torch.stack([weights[i].reshape(-1)[probe.long()] for i in members]).cpu()
        firsts: list[tuple[int, int]] = []  # (position in members, index) of distinct weights
        for position, index in enumerate(members):
            weight = weights[index]
            for first_position, first in firsts:
                other = weights[first]
                same_storage = (
                    weight.untyped_storage().data_ptr() == other.untyped_storage().data_ptr()
                    and weight.storage_offset() == other.storage_offset()
                    and weight.stride() == other.stride()
                )
                if same_storage or (
                    torch.equal(samples[position], samples[first_position])
                    and torch.equal(weight, other)
                    and not bool(weight.amin() == weight.amax())
                ):
                    owner[index] = first
                    break
            else:
                firsts.append((position, index))
    return owner


def _shared_reason(first: str) -> str:
    return f"shares its weight with {first!r} (counted once there)"


def _mark_shared(found: list[ConvLayer | SkippedLayer]) -> list[ConvLayer | SkippedLayer]:
    """Skip every later copy of a weight, and list its names on the first."""
    positions = [i for i, item in enumerate(found) if isinstance(item, ConvLayer)]
    owner = shared_weights([found[i].weight for i in positions])  # type: ignore[union-attr]
    result = list(found)
    copies: dict[int, list[str]] = defaultdict(list)
    for copy, first in sorted(owner.items()):
        layer = result[positions[copy]]
        assert isinstance(layer, ConvLayer)
        copies[positions[first]].append(layer.name)
        result[positions[copy]] = SkippedLayer.of(
            layer, _shared_reason(found[positions[first]].name)
        )
    for first, names in copies.items():
        layer = result[first]
        assert isinstance(layer, ConvLayer)
        result[first] = replace(layer, shared_with=(*layer.shared_with, *names))
    return result


def conv_modules(model: nn.Module) -> tuple[nn.Module, dict[nn.Module, list[str]]]:
    """The unwrapped network and each of its convolutions with its layer names.

    The names are those every table uses (wrapper segments removed, ``ROOT_NAME``
    for a model that is itself a convolution), so code that needs the modules
    themselves (a forward pass, hooks) finds them under the names of the rows.

    Args:
        model: The module (wrappers are unwrapped as ``filters_from_module`` does).

    Returns:
        ``(network, {conv module: [its layer names, in registration order]})``.
    """
    inner = _unwrap(model)
    conv_names: dict[nn.Module, list[str]] = {}
    for raw_name, module in inner.named_modules(remove_duplicate=False):
        if is_conv(module):
            conv_names.setdefault(module, []).append(layer_name(strip_wrapper_prefixes(raw_name)))
    return inner, conv_names


def filters_from_module(
    model: nn.Module, *, depth: str = "auto", example_inputs: Any = None
) -> FilterSet:
    """Every convolution of a module (all kernel sizes), read-only.

    Args:
        model: The module; wrappers (DataParallel/DDP, ``torch.compile``, a
            LightningModule holding one network) are unwrapped.
        depth: ``"auto"``, ``"fx"``, ``"forward"`` or ``"registration"``.
        example_inputs: Input(s) for a forward pass when the model does not trace.

    Returns:
        The [`FilterSet`][filterstats.FilterSet] of every convolution
        (``kernel_size=None``).
    """
    inner, conv_names = conv_modules(model)
    found: list[ConvLayer | SkippedLayer] = []
    for module, names in conv_names.items():
        item = _read_conv(names[0], module)
        # A module registered under several names: one weight, shared (below).
        found.extend(replace(item, name=name) for name in names)
    depths: dict[str, int] = {}
    method = "none"
    if conv_names and is_conv(inner):
        depths, method = {name: 1 for name in conv_names[inner]}, "single"
    elif conv_names:
        depths, method = graph_depths(
            inner, conv_names, is_conv, method=depth, example_inputs=example_inputs
        )
    ranks = conv_depth_ranks(depths)
    placed: list[ConvLayer | SkippedLayer] = []
    for item in found:
        rank = ranks.get(item.name)
        values: dict[str, Any] = {
            "depth": depths.get(item.name),
            "conv_depth": None if rank is None else rank[0],
            "conv_depth_norm": None if rank is None else rank[1],
        }
        if isinstance(item, ConvLayer) and method in _GRAPH_METHODS and rank is None:
            # As the paper's exported graphs: a conv that forward never calls (e.g. an
            # unused branch) is not part of the network.
            reason = f"never called in forward (not in {_GRAPH_METHODS[method]})"
            placed.append(SkippedLayer.of(item, reason))
            continue
        placed.append(replace(item, **values))
    placed = _mark_shared(placed)
    return FilterSet(
        tuple(item for item in placed if isinstance(item, ConvLayer)),
        tuple(item for item in placed if isinstance(item, SkippedLayer)),
        method,
        type(inner).__name__,
        kernel_size=None,
        order=tuple(item.name for item in placed),
    )


def filters_from_state_dict(
    state: Mapping[str, Tensor], *, source: str = "state_dict"
) -> FilterSet:
    """Every convolution weight of a flat state dict (all kernel sizes).

    Conv weights are recognised as 3- to 5-D tensors named ``*.weight`` (also the
    effective weight of old ``weight_norm`` ``weight_g``/``weight_v`` pairs, of
    ``parametrizations.weight.original`` and of old ``spectral_norm``
    ``weight_orig``). Quantised tensors (``torch.ao`` state dicts) are dequantised;
    integer tensors without a scale are listed as skipped. Depth is the position in
    the state dict (``depth_method="state_dict"``), unknown (``"none"``, with a
    warning) for an ``UnorderedStateDict`` (a safetensors file, whose keys are
    sorted by name); groups and strides are unknown.

    Args:
        state: ``{name: tensor}``, already unwrapped
            (``filterstats.checkpoints.to_state_dict``).
        source: Description of the input.

    Returns:
        The [`FilterSet`][filterstats.FilterSet] of every convolution.
    """
    entries: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"state dict keys must be strings, got {type(key).__name__}.")
        if not isinstance(value, Tensor):
            continue
        name = strip_wrapper_prefixes(key)
        if name.endswith(".weight_v"):  # old weight_norm: w = g * v / ||v||
            base = name[: -len(".weight_v")]
            g = state.get(key[: -len("_v")] + "_g")
            if isinstance(g, Tensor) and 3 <= value.ndim <= 5:
                norm = torch.linalg.vector_norm(value.flatten(1).to(torch.float64), dim=1).reshape(
                    g.shape
                )
                entries[base] = (g.to(torch.float64) * value / norm).to(value.dtype)
            continue
        if name.endswith(".parametrizations.weight.original"):
            name = name[: -len(".parametrizations.weight.original")] + ".weight"
        if name.endswith(".weight_orig"):  # old spectral_norm keeps the raw weight
            name = name[: -len("_orig")]
        if (name == "weight" or name.endswith(".weight")) and 3 <= value.ndim <= 5:
            entries[name[: -len("weight")].rstrip(".")] = value
    ordered = not isinstance(state, UnorderedStateDict)
    if not ordered and len(entries) > 1:
        warnings.warn(
            f"{source}: the file keeps no layer order (safetensors sorts its keys), so layer "
            "depths are unknown; load the weights into their architecture (e.g. "
            "timm:NAME@FILE, or a module) for depths.",
            FilterStatsWarning,
            stacklevel=4,
        )
    depth_of = {name: i for i, name in enumerate(entries)} if ordered else {}
    ranks = conv_depth_ranks(depth_of)
    found: list[ConvLayer | SkippedLayer] = []
    for path, weight in entries.items():
        name = layer_name(path)
        rank = ranks.get(path)
        meta: dict[str, Any] = {
            "depth": depth_of.get(path),
            "conv_depth": None if rank is None else rank[0],
            "conv_depth_norm": None if rank is None else rank[1],
        }
        kernel = tuple(int(k) for k in weight.shape[2:])
        weight, reason = _usable(weight)
        if reason:  # its shape is known: keep it on the row, as for a measured tensor
            meta.update(in_channels=int(weight.shape[1]), out_channels=int(weight.shape[0]))
            found.append(SkippedLayer(name, "tensor", reason, kernel_size=kernel, **meta))
            continue
        found.append(
            ConvLayer(
                name=name,
                module_type="tensor",
                weight=weight.detach(),
                in_channels=int(weight.shape[1]),
                out_channels=int(weight.shape[0]),
                groups=None,
                kernel_size=kernel,
                stride=None,
                **meta,
            )
        )
    found = _mark_shared(found)
    return FilterSet(
        tuple(item for item in found if isinstance(item, ConvLayer)),
        tuple(item for item in found if isinstance(item, SkippedLayer)),
        "state_dict" if ordered else "none",
        source,
        kernel_size=None,
        order=tuple(item.name for item in found),
    )
