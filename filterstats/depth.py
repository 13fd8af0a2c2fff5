"""Graph depth of convolutions: the longest path from the model input.

The paper (via its ONNX pipeline) defines a layer's ``depth`` as the longest node path
from the input, ``conv_depth`` as the rank of that depth among the distinct depths
holding any convolution (so parallel convolutions share a depth), and
``conv_depth_norm = conv_depth / (number of conv depths - 1)``.

Three ways to get the graph, tried in this order by ``method="auto"``:

1. ``"fx"``: symbolic tracing with :mod:`torch.fx` (no input needed, nothing runs);
2. ``"forward"``: one forward pass on ``example_inputs`` under ``torch.no_grad`` and
   eval mode, following every tensor operation (modes restored afterwards);
3. ``"registration"``: module registration order, with a warning.

TorchScript modules (``torch.jit.trace``, ``torch.jit.script``, ``torch.jit.load``)
neither trace with ``torch.fx`` nor run forward hooks on their submodules: for
them ``"auto"`` and ``"forward"`` read the graph that their forward runs (its
inlined TorchScript graph, see ``filterstats._torchscript``; nothing runs, no
input needed), recorded as ``"torchscript"``; when that graph hides calls, depth
falls back to registration order with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from filterstats._modes import eval_mode
from filterstats._torchscript import conv_calls
from filterstats._warnings import FilterStatsWarning

__all__ = [
    "conv_depth_ranks",
    "forward_depths",
    "fx_depths",
    "graph_depths",
    "torchscript_depths",
]


def fx_depths(
    model: nn.Module,
    is_conv: Callable[[nn.Module], bool],
    conv_names: dict[nn.Module, list[str]] | None = None,
) -> dict[str, int]:
    """Depth of every convolution by symbolic tracing.

    Args:
        model: The (unwrapped) model.
        is_conv: Predicate: which modules are convolutions (kept as graph leaves).
        conv_names: ``{conv module: [its names]}``: the names to report each called
            module under; default: the path the graph calls it by.

    Returns:
        ``{module path: depth}``; depth counts graph nodes from the input (0).

    Raises:
        Exception: Whatever tracing raises for models with data-dependent control flow.
    """

    class _ConvLeafTracer(fx.Tracer):
        def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
            return is_conv(module) or super().is_leaf_module(module, qualified_name)

    graph = _ConvLeafTracer().trace(model)
    depth: dict[fx.Node, int] = {}
    result: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            depth[node] = 0
            continue
        inputs = [depth[n] for n in node.all_input_nodes if n in depth]
        if not inputs:
            continue  # constants and parameters are not on a path from the input
        depth[node] = max(inputs) + 1
        if node.op != "call_module":
            continue
        module = model.get_submodule(str(node.target))
        if is_conv(module):
            names = conv_names.get(module, [str(node.target)]) if conv_names else [str(node.target)]
            for name in names:
                result[name] = max(result.get(name, 0), depth[node])
    return result


class _DepthMode(TorchFunctionMode):
    """Tags each tensor derived from the input with its longest path length."""

    def __init__(self) -> None:
        super().__init__()
        self.depth: dict[int, int] = {}
        self._alive: list[Tensor] = []  # keep tagged tensors alive so ids stay unique

    def tag(self, tensor: Tensor, value: int) -> None:
        self.depth[id(tensor)] = value
        self._alive.append(tensor)

    def of(self, values: Any) -> int | None:
        found = [self.depth[id(t)] for t in pytree.tree_leaves(values) if id(t) in self.depth]
        return max(found) if found else None

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        incoming = self.of((args, kwargs))
        if incoming is not None:
            for leaf in pytree.tree_leaves(output):
                if isinstance(leaf, Tensor):
                    self.tag(leaf, incoming + 1)
        return output


def forward_depths(
    model: nn.Module,
    example_inputs: Any,
    conv_names: dict[nn.Module, list[str]],
) -> dict[str, int]:
    """Depth of every convolution from one forward pass.

    The model runs once under ``torch.no_grad()`` with every module's ``training``
    flag temporarily False (restored afterwards, also on error); temporary hooks
    on the convolutions are removed in ``finally``.

    Args:
        model: The (unwrapped) model.
        example_inputs: A tensor, or a tuple of positional inputs.
        conv_names: ``{conv module: [its names]}``.

    Returns:
        ``{module path: depth}``.
    """
    mode = _DepthMode()
    result: dict[str, int] = {}
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        incoming = mode.of(args)
        if incoming is None:
            return
        for name in conv_names[module]:
            result[name] = max(result.get(name, 0), incoming + 1)

    handles = [module.register_forward_pre_hook(hook) for module in conv_names]
    try:
        with torch.no_grad(), eval_mode(model), mode:
            for leaf in pytree.tree_leaves(inputs):
                if isinstance(leaf, Tensor):
                    mode.tag(leaf, 0)
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return result


def torchscript_depths(
    model: torch.jit.ScriptModule, conv_names: dict[nn.Module, list[str]]
) -> dict[str, int]:
    """Depth of every convolution a TorchScript module's forward calls, from its graph.

    Args:
        model: A ``torch.jit.ScriptModule`` (traced, scripted or loaded).
        conv_names: ``{conv module: [its names]}``.

    Returns:
        ``{module path: depth}``; convolutions the graph never calls are absent.

    Raises:
        RuntimeError: The graph cannot be read or hides calls (see
            ``filterstats._torchscript.conv_calls``).
    """
    by_path = dict(model.named_modules(remove_duplicate=False))
    result: dict[str, int] = {}
    for call in conv_calls(model):
        module = by_path.get(call.path) if call.path is not None else None
        if module is None or module not in conv_names or call.depth is None:
            continue
        for name in conv_names[module]:
            result[name] = max(result.get(name, 0), call.depth)
    return result


def _hidden_convs(conv_names: dict[nn.Module, list[str]]) -> list[str]:
    """Convolutions inside TorchScript modules, which fx and forward hooks do not see."""
    return [
        names[0] for module, names in conv_names.items()
        if isinstance(module, torch.jit.ScriptModule)
    ]  # fmt: skip


def graph_depths(
    model: nn.Module,
    conv_names: dict[nn.Module, list[str]],
    is_conv: Callable[[nn.Module], bool],
    *,
    method: str = "auto",
    example_inputs: Any = None,
) -> tuple[dict[str, int], str]:
    """Depths of the convolutions by the first method that works.

    Args:
        model: The (unwrapped) model.
        conv_names: ``{conv module: [its names]}`` in registration order.
        is_conv: Predicate for convolution modules.
        method: ``"auto"``, ``"fx"``, ``"forward"`` or ``"registration"``; for a
            TorchScript module ``"auto"`` and ``"forward"`` read its graph.
        example_inputs: Input for ``"forward"`` (not needed for TorchScript).

    Returns:
        ``({module path: depth}, method used)``: ``"fx"``, ``"forward"``,
        ``"torchscript"`` or ``"registration"``.
    """
    errors: list[str] = []
    scripted = isinstance(model, torch.jit.ScriptModule)
    hidden = _hidden_convs(conv_names)
    if method == "registration":
        return _registration(conv_names), "registration"
    if isinstance(model, torch.jit.ScriptModule) and method in ("auto", "forward"):
        try:
            return torchscript_depths(model, conv_names), "torchscript"
        except Exception as error:  # a graph that hides calls: no reliable order
            errors.append(f"torchscript: {type(error).__name__}: {error}")
    elif hidden and method in ("auto", "forward"):
        # TorchScript submodules in an eager model: fx and forward hooks do not see
        # their convolutions, which would look "never called".
        errors.append(f"convolutions inside TorchScript submodules: {', '.join(hidden[:5])}")
    else:
        if method in ("auto", "fx"):
            try:
                return fx_depths(model, is_conv, conv_names), "fx"
            except Exception as error:  # tracing fails in many legitimate ways
                if method == "fx":
                    raise RuntimeError(
                        f"torch.fx could not trace {type(model).__name__}: {error}. Pass "
                        "`example_inputs=` and depth='forward', or depth='registration'."
                    ) from error
                errors.append(f"fx: {type(error).__name__}: {error}")
        if method in ("auto", "forward") and example_inputs is not None:
            try:
                return forward_depths(model, example_inputs, conv_names), "forward"
            except Exception as error:
                if method == "forward":
                    raise
                errors.append(f"forward: {type(error).__name__}: {error}")
        elif method == "forward":
            raise ValueError("depth='forward' needs `example_inputs=` (a tensor or tuple).")
    reason = "; ".join(errors) or "no graph"
    hint = (
        " Pass `example_inputs=` for a forward pass."
        if example_inputs is None and not scripted and not hidden else ""
    )  # fmt: skip
    warnings.warn(
        f"depth of {type(model).__name__} taken from module registration order "
        f"({reason[:300]}).{hint}",
        FilterStatsWarning,
        stacklevel=4,
    )
    return _registration(conv_names), "registration"


def _registration(conv_names: dict[nn.Module, list[str]]) -> dict[str, int]:
    names = [name for names in conv_names.values() for name in names]
    return {name: index for index, name in enumerate(names)}


def conv_depth_ranks(depths: dict[str, int]) -> dict[str, tuple[int, float]]:
    """``conv_depth`` and ``conv_depth_norm`` from raw depths of all convolutions.

    Args:
        depths: ``{module path: depth}`` of every convolution (all kernel sizes).

    Returns:
        ``{module path: (conv_depth, conv_depth_norm)}``; ``conv_depth_norm`` is 0
        when there is a single conv depth.
    """
    levels = sorted(set(depths.values()))
    rank = {level: i for i, level in enumerate(levels)}
    top = max(len(levels) - 1, 1)
    return {name: (rank[d], rank[d] / top) for name, d in depths.items()}
