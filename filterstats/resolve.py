"""The one way in: anything a user may hold, turned into a ``FilterSet``.

Every public function that takes a model (``analyze``, ``compare``, ``measure`` of a
model, ``pca_basis``, ``filter_divergence``, ``first_layer_response``, the plots,
``report``, ``scan`` and the command line) calls
[`extract_filters`][filterstats.extract_filters], so the same model gives the same
layers, the same skipped layers and the same numbers through every door:

==================================  ===================================================
input                               how it is read
==================================  ===================================================
``nn.Module`` (a bare conv too)     its convolutions, wrappers unwrapped
                                    (``filterstats.extract.filters_from_module``)
state dict or checkpoint dict       ``filterstats.checkpoints.to_state_dict`` (one list
                                    of wrapper entries, one prefix rule), then
                                    ``filterstats.extract.filters_from_state_dict``
one weight tensor                   a single layer named ``"(root)"``
``FilterSet``                       as it is
path or spec string                 ``filterstats.zoo.specs.load_model`` (checkpoint
                                    files, ``.safetensors``, TorchScript archives,
                                    ``.onnx``, ``demo:``, ``timm:``, ``robustbench:``),
                                    then as above
==================================  ===================================================

Then, in one place, the kernel size is selected (``FilterSet.select``); the
returned set's ``kernel_size`` states the selection that was applied.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from filterstats._checks import check_choice, normalize_kernel_size
from filterstats._warnings import FilterStatsWarning
from filterstats.checkpoints import to_state_dict
from filterstats.extract import filters_from_module, filters_from_state_dict
from filterstats.layers import FilterSet, KernelSelection, selection_text

__all__ = ["ModelInput", "extract_filters", "runnable_module"]

#: What every function that takes a model accepts.
ModelInput = nn.Module | Mapping[str, Any] | FilterSet | Tensor | str | os.PathLike[str]

DEPTH_METHODS = ("auto", "fx", "forward", "registration")


def _every_layer(
    model: Any, *, example_inputs: Any, depth: str, trust_pickle: bool, argument: str
) -> FilterSet:
    if isinstance(model, FilterSet):
        return model
    if isinstance(model, (str, os.PathLike)):
        from filterstats.zoo.specs import load_model  # the zoo loads its extras on use

        loaded = load_model(os.fspath(model), trust_pickle=trust_pickle)
        filters = _every_layer(
            loaded,
            example_inputs=example_inputs,
            depth=depth,
            trust_pickle=trust_pickle,
            argument=argument,
        )
        return _with_source(filters, os.fspath(model))  # the spec names the model best
    if isinstance(model, nn.Module):
        return filters_from_module(model, depth=depth, example_inputs=example_inputs)
    if isinstance(model, Tensor):
        return filters_from_state_dict({"weight": model}, source="tensor")
    if isinstance(model, Mapping):
        state = to_state_dict(model, source=f"`{argument}`")
        return filters_from_state_dict(state, source="state_dict")
    hint = (
        " A FilterReport holds metrics, not weights: pass the model it was made from."
        if type(model).__name__ == "FilterReport"
        else ""
    )
    raise TypeError(
        f"`{argument}` must be an nn.Module, a state dict or checkpoint dict, a weight tensor, "
        f"a FilterSet, or a path / model spec string (e.g. 'model.pt', 'net.onnx', "
        f"'demo:robust', 'timm:resnet18'), got {type(model).__name__}.{hint}"
    )


def _with_source(filters: FilterSet, source: str) -> FilterSet:
    return FilterSet(
        filters.layers,
        filters.skipped,
        filters.depth_method,
        source,
        kernel_size=filters.kernel_size,
        order=filters.order,
    )


def extract_filters(
    model: ModelInput,
    *,
    kernel_size: KernelSelection = (3, 3),
    example_inputs: Any = None,
    depth: str = "auto",
    trust_pickle: bool = False,
    argument: str = "model",
) -> FilterSet:
    """Every convolution's effective filters, with layer metadata: the one resolver.

    Takes anything that holds a model and returns its convolutions as a
    [`FilterSet`][filterstats.FilterSet] (see the table in
    [`filterstats.resolve`][filterstats.resolve]). For modules: every ``_ConvNd``
    (``Conv1d/2d/3d``, ``ConvTranspose*``, subclasses, grouped and depthwise),
    quantised and TorchScript convolutions and any class registered with
    [`register_effective_weight`][filterstats.register_effective_weight]; a bare
    convolution is a model of one layer named ``"(root)"``. Wrappers
    (``DataParallel``, ``DistributedDataParallel``, ``torch.compile``, a
    LightningModule holding one network) are unwrapped and their name segments
    dropped. Transposed convolutions are given in the ``(C_out, C_in / groups, *k)``
    orientation of the others; weights are effective weights (parametrisations,
    weight/spectral norm applied; quantised weights dequantised).

    Depth: the longest path from the input in the traced graph (see
    [`filterstats.depth`][]); ``conv_depth`` ranks it among all convolutions'
    depths (every kernel size). TorchScript models (traced, scripted, loaded) take
    it from their inlined TorchScript graph (``depth_method="torchscript"``, no
    input needed), and traced convolutions their groups and stride from its
    convolution calls. State dicts have no graph: their depth is the position in
    the dict.

    No silent skips: every convolution not selected (other kernel size, lazy or meta
    weights, integer weights without a scale, a weight shared with an earlier layer,
    a convolution the forward pass never calls) is in ``skipped`` with its reason.
    Shared weights: same tensor storage, or exactly equal values (not for constant
    tensors), counted once at the first layer.

    Args:
        model: A module, a state dict or checkpoint dict, a weight tensor, a
            ``FilterSet``, or a path / model spec string (``"model.pt"``,
            ``"net.onnx"``, ``"demo:robust"``, ``"timm:resnet18@weights.safetensors"``).
        kernel_size: Kernel size to select: a tuple such as ``(3, 3)`` (the paper's),
            an int ``k`` (``(k, k)``, as in ``nn.Conv2d``; other dimensions take a
            tuple such as ``(3, 3, 3)``), or ``None`` for every size. A
            ``FilterSet`` already selected keeps its narrower selection.
        example_inputs: Input(s) for a forward pass, used for depth when the model
            does not trace with ``torch.fx`` (not needed for TorchScript models).
        depth: ``"auto"``, ``"fx"``, ``"forward"`` or ``"registration"``.
        trust_pickle: For files that need pickled code to load: allow it (can run
            arbitrary code; only for files from a source you trust).
        argument: Name of the argument in error messages.

    Returns:
        A [`FilterSet`][filterstats.FilterSet]; ``kernel_size`` records the
        selection applied. A warning is issued when no layer is selected.

    Raises:
        TypeError: If ``model`` is none of the accepted kinds.
        CheckpointError: If a file cannot be read (missing, corrupt, refused).

    Examples:
        >>> import torch, filterstats as fs
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
        ...                           torch.nn.Conv2d(8, 8, 1))
        >>> filters = fs.extract_filters(net)
        >>> filters.names, [s.reason for s in filters.skipped]
        (('0',), ['kernel size (1, 1) is not (3, 3)'])
    """
    wanted = normalize_kernel_size(kernel_size)
    check_choice("depth", depth, DEPTH_METHODS)
    every = _every_layer(
        model, example_inputs=example_inputs, depth=depth, trust_pickle=trust_pickle,
        argument=argument,
    )  # fmt: skip
    result = every.select(wanted)
    if not result.layers:
        found = ", ".join(f"{s.name} ({s.reason})" for s in result.skipped[:5]) or "none"
        which = (
            "no convolution" if result.kernel_size is None
            else f"no convolution with kernel size {selection_text(result.kernel_size)}"
        )  # fmt: skip
        warnings.warn(
            f"{which} in {result.source or 'the model'}; convolutions found: {found}.",
            FilterStatsWarning,
            stacklevel=2,
        )
    return result


def runnable_module(
    model: ModelInput, *, argument: str = "model", trust_pickle: bool = False
) -> nn.Module:
    """A module that can run a forward pass: the module itself, or what a spec loads.

    For functions that need the architecture, not only the weights (a forward pass
    for input sizes or responses, re-initialisation): a path or spec string is loaded
    with ``filterstats.zoo.specs.load_model``; weights-only inputs (state dicts,
    ``FilterSet``, ONNX files, tensors) are refused with the reason.

    Args:
        model: A module, or a path / spec string naming one.
        argument: Name of the argument in error messages.
        trust_pickle: As in ``extract_filters``.

    Returns:
        The module (never a copy: callers must not change it).

    Raises:
        TypeError: ``model`` holds weights only, or is not a model.
    """
    held: Any = model
    what = "got"
    if isinstance(model, (str, os.PathLike)):
        from filterstats.zoo.specs import load_model

        held = load_model(os.fspath(model), trust_pickle=trust_pickle)
        what = f"{os.fspath(model)!r} holds"
    if isinstance(held, nn.Module):
        return held
    raise TypeError(
        f"`{argument}` must be a model that runs (an nn.Module, or a spec of one such as "
        f"'demo:robust' or 'timm:resnet18'); {what} weights only ({type(held).__name__}). "
        "Build the architecture, load the weights into it and pass the module."
    )
