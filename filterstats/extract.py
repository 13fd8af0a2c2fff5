"""Find every convolution of a model and read its effective weight, read-only.

Nothing here changes the model: no ``.to()``, ``.eval()``, ``.requires_grad_()``;
weights are detached views of the parameters where possible. Parametrisations
(``torch.nn.utils.parametrize``, weight/spectral norm) are evaluated with their
``training`` flags temporarily False so that spectral norm runs no power iteration
(restored afterwards).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.parameter import UninitializedParameter
from torch.nn.utils import parametrize

from filterstats._checks import check_choice, normalize_kernel_size
from filterstats._modes import eval_mode
from filterstats._warnings import FilterStatsWarning
from filterstats.depth import conv_depth_ranks, graph_depths
from filterstats.layers import ConvLayer, FilterSet, SkippedLayer

__all__ = ["extract_filters", "register_effective_weight"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)
WeightGetter = Callable[[Any], Tensor]

_EFFECTIVE_WEIGHT: dict[type, WeightGetter] = {}
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SCRIPTED_CONVS = {
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
}  # fmt: skip
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")


def register_effective_weight(
    module_cls: type[ModuleT], getter: Callable[[ModuleT], Tensor] | None = None
) -> Any:
    """Tell extraction how to get the weight a module really convolves with.

    For modules that transform their weight in ``forward`` (weight standardisation,
    re-parameterisation, custom quantisation), register a function that returns the
    effective weight ``(C_out, C_in / groups, *kernel)``. Subclasses inherit the
    getter; the most specific registered class wins. Registering a class that is not
    a ``_ConvNd`` subclass makes extraction treat it as a convolution.

    Args:
        module_cls: The module class.
        getter: ``getter(module) -> Tensor``; omit to use as a decorator.

    Returns:
        ``getter`` (or the decorator).

    Examples:
        >>> import torch, filterstats as fs
        >>> class StdConv(torch.nn.Conv2d):
        ...     def forward(self, x):
        ...         return self._conv_forward(x, standardize(self.weight), self.bias)
        >>> def standardize(w):
        ...     return (w - w.mean((1, 2, 3), keepdim=True)) / w.std((1, 2, 3), keepdim=True)
        >>> _ = fs.register_effective_weight(StdConv, lambda m: standardize(m.weight))
    """
    if not isinstance(module_cls, type) or not issubclass(module_cls, nn.Module):
        raise TypeError(f"`module_cls` must be an nn.Module subclass, got {module_cls!r}.")

    def decorate(function: Callable[[ModuleT], Tensor]) -> Callable[[ModuleT], Tensor]:
        if not callable(function):
            raise TypeError(f"`getter` must be callable, got {function!r}.")
        _EFFECTIVE_WEIGHT[module_cls] = function
        return function

    return decorate if getter is None else decorate(getter)


def _registered_getter(module: nn.Module) -> WeightGetter | None:
    if type(module).__module__.startswith("timm.") and "filterstats.zoo.timm" not in sys.modules:
        # timm is already imported (the module is one of its classes): register the
        # getters of its weight-standardised convolutions.
        importlib.import_module("filterstats.zoo.timm")
    for cls in type(module).__mro__:
        if cls in _EFFECTIVE_WEIGHT:
            return _EFFECTIVE_WEIGHT[cls]
    return None


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
    """Whether extraction treats ``module`` as a convolution."""
    return (
        isinstance(module, _ConvNd)
        or _registered_getter(module) is not None
        or _is_quantized_conv(module)
        or _is_scripted_conv(module)
    )


def _unwrap(model: nn.Module) -> nn.Module:
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def _strip_prefixes(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
        for infix in (".module.", "._orig_mod."):
            if infix in name:
                name, changed = name.replace(infix, "."), True
    return name


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


def _weight_key(module: nn.Module) -> tuple[int, ...]:
    """Identity of the parameters a module's weight comes from (for sharing)."""
    ids = tuple(
        id(param)
        for name, param in module.named_parameters(recurse=True)
        if "weight" in name.split(".")[-1] or name.endswith("original")
    )
    return ids or (id(module),)


def _as_tuple(value: Any, ndim: int) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value,) * ndim
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        return None


def _kernel_matches(kernel: tuple[int, ...], wanted: int | tuple[int, ...] | None) -> bool:
    if wanted is None:
        return True
    if isinstance(wanted, int):
        return all(k == wanted for k in kernel)
    return kernel == wanted


def _describe(wanted: int | tuple[int, ...] | None) -> str:
    return f"{wanted}x..." if isinstance(wanted, int) else str(wanted)


def _out_by_in(weight: Tensor, transposed: bool, groups: int) -> Tensor:
    """Transposed-conv weights ``(C_in, C_out / g, *k)`` as ``(C_out, C_in / g, *k)``."""
    if not transposed:
        return weight
    c_in, c_out_per_group = weight.shape[:2]
    kernel = weight.shape[2:]
    grouped = weight.reshape(groups, c_in // groups, c_out_per_group, *kernel)
    return grouped.transpose(1, 2).reshape(groups * c_out_per_group, c_in // groups, *kernel)


def _read_conv(
    name: str, module: nn.Module, wanted: int | tuple[int, ...] | None
) -> ConvLayer | SkippedLayer:
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
    if weight.device.type == "meta":
        return SkippedLayer(name, module_type, "weights on the meta device (not materialised)")
    if not weight.is_floating_point():
        return SkippedLayer(name, module_type, f"unsupported weight dtype {weight.dtype}")
    if weight.numel() == 0:
        return SkippedLayer(
            name, module_type, f"weight has no elements (shape {tuple(weight.shape)})"
        )
    transposed = bool(getattr(module, "transposed", False))
    groups = int(getattr(module, "groups", 1) or 1)
    weight = _out_by_in(weight, transposed, groups)
    kernel = tuple(int(k) for k in weight.shape[2:])
    if not _kernel_matches(kernel, wanted):
        return SkippedLayer(name, module_type, f"kernel size {kernel} is not {_describe(wanted)}")
    return ConvLayer(
        name=name,
        module_type=module_type,
        weight=weight,
        in_channels=int(weight.shape[1] * groups),
        out_channels=int(weight.shape[0]),
        groups=groups,
        kernel_size=kernel,
        stride=_as_tuple(getattr(module, "stride", None), len(kernel)),
        transposed=transposed,
    )


def _from_module(
    model: nn.Module,
    wanted: int | tuple[int, ...] | None,
    depth: str,
    example_inputs: Any,
) -> FilterSet:
    inner = _unwrap(model)
    conv_names: dict[nn.Module, list[str]] = {}
    for raw_name, module in inner.named_modules(remove_duplicate=False):
        if is_conv(module):
            conv_names.setdefault(module, []).append(_strip_prefixes(raw_name))
    found: list[ConvLayer | SkippedLayer] = []
    owner: dict[tuple[int, ...], int] = {}
    shared: dict[int, list[str]] = {}
    for module, names in conv_names.items():
        key = _weight_key(module)
        for name in names:
            if key in owner:
                first = found[owner[key]]
                shared.setdefault(owner[key], []).append(name)
                found.append(
                    SkippedLayer(
                        name,
                        type(module).__name__,
                        f"shares its weight with {first.name!r} (counted once there)",
                    )
                )
                continue
            item = _read_conv(name, module, wanted)
            owner[key] = len(found)
            found.append(item)
    depths: dict[str, int] = {}
    method = "none"
    if conv_names:
        depths, method = graph_depths(
            inner, conv_names, is_conv, method=depth, example_inputs=example_inputs
        )
    ranks = conv_depth_ranks(depths)
    layers: list[ConvLayer] = []
    skipped: list[SkippedLayer] = []
    for index, item in enumerate(found):
        if isinstance(item, SkippedLayer):
            skipped.append(item)
            continue
        if method in ("fx", "forward") and item.name not in depths:
            # As the paper's exported graphs: a conv that forward never calls (e.g. an
            # unused branch) is not part of the network.
            reason = f"never called in forward (not in the graph traced by {method})"
            skipped.append(SkippedLayer(item.name, item.module_type, reason))
            continue
        rank = ranks.get(item.name)
        layers.append(
            replace(
                item,
                depth=depths.get(item.name),
                conv_depth=None if rank is None else rank[0],
                conv_depth_norm=None if rank is None else rank[1],
                shared_with=tuple(shared.get(index, ())),
            )
        )
    return FilterSet(tuple(layers), tuple(skipped), method, type(inner).__name__)


def _unwrap_state_dict(state: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in _STATE_DICT_KEYS:
        inner = state.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, Tensor) for v in inner.values()):
            return inner
    return state


def _from_state_dict(
    state: Mapping[str, Any], wanted: int | tuple[int, ...] | None, source: str
) -> FilterSet:
    state = _unwrap_state_dict(state)
    entries: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"state dict keys must be strings, got {type(key).__name__}.")
        if not isinstance(value, Tensor):
            continue
        name = _strip_prefixes(key)
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
        if name == "weight" or name.endswith(".weight"):
            if 3 <= value.ndim <= 5 and value.is_floating_point():
                entries[name[: -len(".weight")] if name != "weight" else "weight"] = value
    layers: list[ConvLayer] = []
    skipped: list[SkippedLayer] = []
    depth_of = {name: i for i, name in enumerate(entries)}
    ranks = conv_depth_ranks(depth_of)
    for name, weight in entries.items():
        if weight.device.type == "meta":
            skipped.append(SkippedLayer(name, "tensor", "weights on the meta device"))
            continue
        kernel = tuple(int(k) for k in weight.shape[2:])
        if not _kernel_matches(kernel, wanted):
            skipped.append(
                SkippedLayer(name, "tensor", f"kernel size {kernel} is not {_describe(wanted)}")
            )
            continue
        rank = ranks[name]
        layers.append(
            ConvLayer(
                name=name,
                module_type="tensor",
                weight=weight.detach(),
                in_channels=int(weight.shape[1]),
                out_channels=int(weight.shape[0]),
                groups=None,
                kernel_size=kernel,
                stride=None,
                depth=depth_of[name],
                conv_depth=rank[0],
                conv_depth_norm=rank[1],
            )
        )
    return FilterSet(tuple(layers), tuple(skipped), "state_dict", source)


def extract_filters(
    model: nn.Module | Mapping[str, Any],
    *,
    kernel_size: int | tuple[int, ...] | None = (3, 3),
    example_inputs: Any = None,
    depth: str = "auto",
) -> FilterSet:
    """Every convolution's effective filters, with layer metadata.

    Finds every ``_ConvNd`` module (``Conv1d/2d/3d``, ``ConvTranspose*``, subclasses,
    grouped and depthwise), quantised and TorchScript convolutions, and any class
    registered with [`register_effective_weight`][filterstats.register_effective_weight].
    Wrappers (``DataParallel``, ``DistributedDataParallel``, ``torch.compile``) are
    unwrapped and their prefixes dropped from names. Transposed convolutions are given
    in the same ``(C_out, C_in / groups, *k)`` orientation as others. Weights are
    effective weights: parametrisations and weight/spectral norm applied.

    Depth: the longest path from the input in the traced graph (see
    [`filterstats.depth`][]); ``conv_depth`` ranks it among all convolutions' depths.

    No silent skips: every convolution not selected (other kernel size, lazy or meta
    weights, a weight shared with an earlier module) is in ``skipped`` with its reason.

    Args:
        model: An ``nn.Module`` (wrapped or not) or a state dict / mapping of tensors
            (conv weights recognised as 3- to 5-D floating tensors named ``*.weight``;
            a nested ``state_dict``/``model_state_dict``/``model`` entry is unwrapped).
        kernel_size: Kernel size to select: a tuple such as ``(3, 3)`` (the paper's),
            an int ``k`` (every dimension ``k``), or ``None`` for every size.
        example_inputs: Input(s) for a forward pass, used for depth when the model
            does not trace with ``torch.fx``.
        depth: ``"auto"``, ``"fx"``, ``"forward"`` or ``"registration"``.

    Returns:
        A [`FilterSet`][filterstats.FilterSet]. A warning is issued when no layer is
        selected.

    Raises:
        TypeError: If ``model`` is neither a module nor a mapping.

    Examples:
        >>> import torch, filterstats as fs
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
        ...                           torch.nn.Conv2d(8, 8, 1))
        >>> filters = fs.extract_filters(net)
        >>> filters.names, [s.reason for s in filters.skipped]
        (('0',), ['kernel size (1, 1) is not (3, 3)'])
    """
    wanted = normalize_kernel_size(kernel_size)
    check_choice("depth", depth, ("auto", "fx", "forward", "registration"))
    if isinstance(model, nn.Module):
        result = _from_module(model, wanted, depth, example_inputs)
    elif isinstance(model, Mapping):
        result = _from_state_dict(model, wanted, "state_dict")
    else:
        raise TypeError(
            f"`model` must be a torch.nn.Module or a state dict (mapping of tensors), got "
            f"{type(model).__name__}. For a checkpoint file use "
            "`filterstats.load_state_dict(path)` first."
        )
    if not result.layers:
        import warnings

        found = ", ".join(f"{s.name} ({s.reason})" for s in result.skipped[:5]) or "none"
        warnings.warn(
            f"no convolution with kernel size {_describe(wanted)} in {result.source}; "
            f"convolutions found: {found}.",
            FilterStatsWarning,
            stacklevel=2,
        )
    return result
