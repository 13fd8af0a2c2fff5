"""The convolution calls of a TorchScript module, read from its inlined graph.

Forward hooks do not run on the submodules of a TorchScript module (traced or
scripted, in memory or loaded with ``torch.jit.load``), and traced submodules keep
no ``groups``/``stride`` attributes. The graph that TorchScript runs holds both:
each convolution call (``aten::_convolution``, ``aten::conv2d``, ...) takes the
module's weight (``prim::GetAttr`` chain from ``self``, which names the module) and
its groups and stride as arguments. Nothing runs; no input is needed.

Depth counts graph nodes from the inputs as the forward-pass method does: a node
that returns a tensor is one step deeper than its deepest input; TorchScript's
structural nodes (``prim::*``: constants, attribute reads, lists and tuples,
``If``/``Loop``) and non-tensor results (sizes, lists) pass depth through without
adding a step. A convolution module that pads its own input
(``padding_mode="reflect"``) counts as one node, as in the fx graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ConvCall", "conv_calls"]

#: ``{node kind: (index of groups, index of transposed or a fixed bool)}``; the input
#: is argument 0, the weight 1, the stride 3 for every kind.
_CONV_KINDS: dict[str, tuple[int, int | bool]] = {
    "aten::_convolution": (8, 6),
    "aten::convolution": (8, 6),
    "aten::_convolution_mode": (6, False),
    "aten::conv1d": (6, False),
    "aten::conv2d": (6, False),
    "aten::conv3d": (6, False),
    "aten::conv_transpose1d": (6, True),
    "aten::conv_transpose2d": (6, True),
    "aten::conv_transpose3d": (6, True),
}
#: Calls the inlined graph still holds (interfaces, forks): convolutions inside them
#: are not visible, so the graph cannot say which convolutions forward calls.
_OPAQUE = {"prim::CallMethod", "prim::CallFunction", "prim::fork", "prim::PythonOp"}
#: Padding nodes (a conv module's ``padding_mode``).
_PADS = {
    "aten::pad", "aten::constant_pad_nd", "aten::reflection_pad1d", "aten::reflection_pad2d",
    "aten::reflection_pad3d", "aten::replication_pad1d", "aten::replication_pad2d",
    "aten::replication_pad3d", "aten::circular_pad1d", "aten::circular_pad2d",
    "aten::circular_pad3d", "aten::_pad_circular",
}  # fmt: skip
#: Nodes that pass depth through without a step (besides every ``prim::`` node).
_PASS_THROUGH = {"aten::__getitem__", "aten::list", "aten::append", "aten::format"}


@dataclass(frozen=True)
class ConvCall:
    """One convolution call in a TorchScript graph.

    Attributes:
        path: Module path of the module whose ``weight`` the call takes
            (``"layer1.0.conv1"``; ``""`` for the root module), ``None`` when the
            weight is not a module's ``weight`` attribute.
        depth: Longest path from the graph inputs (0) to the call, in nodes.
        groups: The call's ``groups`` argument, ``None`` when it is not a constant.
        stride: The call's stride, ``None`` when it is not constant.
        transposed: Whether the call is a transposed convolution, ``None`` if unknown.
    """

    path: str | None
    depth: int | None
    groups: int | None
    stride: tuple[int, ...] | None
    transposed: bool | None


def _constant(value: Any) -> Any:
    """The value of a graph ``Value`` made of constants, else ``None``."""
    node = value.node()
    if node.kind() == "prim::Constant":
        try:
            return value.toIValue()
        except Exception:  # a constant TorchScript cannot hand to Python
            return None
    if node.kind() == "prim::ListConstruct":
        items = [_constant(item) for item in node.inputs()]
        return None if any(item is None for item in items) else items
    return None


def _attribute_path(value: Any, root: Any) -> list[str] | None:
    """``["layer1", "0", "conv1", "weight"]`` for a ``prim::GetAttr`` chain from ``root``."""
    names: list[str] = []
    while value is not root:
        node = value.node()
        if node.kind() != "prim::GetAttr":
            return None
        names.append(node.s("name"))
        value = node.input()
    return names[::-1]


def _is_tensor(value: Any) -> bool:
    return isinstance(value.type(), torch._C.TensorType)


def conv_calls(module: torch.jit.ScriptModule) -> list[ConvCall]:
    """Every convolution call of a TorchScript module's ``forward``, in graph order.

    Args:
        module: A ``torch.jit.ScriptModule`` (``torch.jit.trace``, ``torch.jit.script``
            or ``torch.jit.load``).

    Returns:
        One ``ConvCall`` per call whose weight is a
        module attribute (a module called twice appears twice).

    Raises:
        RuntimeError: The module has no ``forward`` graph, or the inlined graph still
            holds calls (``prim::CallMethod`` of an interface, ``fork``) that hide
            which convolutions run.
    """
    try:
        graph = module.inlined_graph
    except Exception as error:  # no forward method, or a graph that cannot inline
        raise RuntimeError(f"no inlined TorchScript graph: {error}") from error
    inputs = list(graph.inputs())
    if not inputs:
        raise RuntimeError("the TorchScript graph has no inputs")
    root = inputs[0]
    depth: dict[Any, int] = {value: 0 for value in inputs[1:]}
    calls: list[ConvCall] = []

    def deepest(values: Any) -> int | None:
        found = [depth[value] for value in values if value in depth]
        return max(found) if found else None

    def walk(block: Any) -> None:
        for node in block.nodes():
            kind = node.kind()
            if kind in _OPAQUE:
                raise RuntimeError(f"the inlined TorchScript graph still calls {kind}")
            node_inputs = list(node.inputs())
            incoming = deepest(node_inputs)
            for sub in node.blocks():
                params = list(sub.inputs())
                if kind == "prim::Loop":  # (trip count, condition, *carried) -> (i, *carried)
                    sources = [node_inputs[0], *node_inputs[2:]]
                    for param, source in zip(params, sources, strict=False):
                        if source in depth:
                            depth[param] = depth[source]
                walk(sub)
            through = deepest([out for sub in node.blocks() for out in sub.outputs()])
            if through is not None:
                incoming = through if incoming is None else max(incoming, through)
            if incoming is None:
                continue
            if kind in _CONV_KINDS and len(node_inputs) > 3:
                padded = _own_padding(node, node_inputs, root, module)
                if padded is not None and padded in depth:
                    incoming = depth[padded]  # the module's padding and conv: one node
            step = 0 if kind.startswith("prim::") or kind in _PASS_THROUGH else 1
            for output in node.outputs():
                depth[output] = incoming + (step if _is_tensor(output) else 0)
            if kind in _CONV_KINDS and len(node_inputs) > 3:
                calls.append(_conv_call(node, node_inputs, root, incoming + 1))
            elif "conv" in kind.lower() and not kind.startswith("prim::"):
                # Another convolution op (quantized::conv2d, mkldnn, ...): its module
                # is called (no "never called"), its arguments are not read.
                calls.extend(_other_conv_calls(node_inputs, root, incoming + step))

    walk(graph)
    return calls


def _own_padding(node: Any, node_inputs: list[Any], root: Any, module: Any) -> Any:
    """The unpadded input when a conv module pads its own input (``padding_mode``).

    ``Conv2d(padding_mode="reflect")`` runs ``F.pad`` then the convolution; fx and
    the forward pass count the module as one node, so the pad adds no step. The pad
    is the module's own when the module's own forward graph is that pad of its
    input followed by the convolution (then, inlined, the pad feeding its call is
    that one); an explicit ``F.pad`` outside the module stays a node.
    """
    pad = node_inputs[0].node()
    if pad.kind() not in _PADS:
        return None
    path = _attribute_path(node_inputs[1], root)
    if not path or path[-1] != "weight":
        return None
    try:
        conv = module
        for name in path[:-1]:  # ScriptModules have no get_submodule
            conv = getattr(conv, name)
        graph = conv.inlined_graph
    except Exception:  # not a submodule with a forward graph
        return None
    inputs = list(graph.inputs())
    if len(inputs) < 2:
        return None
    for inner in graph.nodes():
        args = list(inner.inputs())
        if inner.kind() not in _CONV_KINDS or len(args) < 2:
            continue
        if _attribute_path(args[1], inputs[0]) != ["weight"]:
            continue
        source = args[0].node()
        if source.kind() in _PADS and next(source.inputs(), None) is inputs[1]:
            return next(pad.inputs(), None)
    return None


def _other_conv_calls(node_inputs: list[Any], root: Any, depth: int) -> list[ConvCall]:
    """Calls of an unlisted convolution op: the modules whose attributes it reads."""
    paths = {
        ".".join(path[:-1])
        for value in node_inputs[1:]
        if (path := _attribute_path(value, root))
    }  # fmt: skip
    return [ConvCall(path, depth, None, None, None) for path in sorted(paths)]


def _conv_call(node: Any, node_inputs: list[Any], root: Any, depth: int) -> ConvCall:
    path = _attribute_path(node_inputs[1], root)
    groups_at, transposed_at = _CONV_KINDS[node.kind()]
    groups = _constant(node_inputs[groups_at]) if len(node_inputs) > groups_at else None
    if isinstance(transposed_at, bool):
        transposed: bool | None = transposed_at
    else:
        flag = _constant(node_inputs[transposed_at]) if len(node_inputs) > transposed_at else None
        transposed = flag if isinstance(flag, bool) else None
    stride = _constant(node_inputs[3])
    if isinstance(stride, int):
        stride = [stride]
    return ConvCall(
        path=".".join(path[:-1]) if path and path[-1] == "weight" else None,
        depth=depth,
        groups=groups if isinstance(groups, int) and not isinstance(groups, bool) else None,
        stride=tuple(int(s) for s in stride) if isinstance(stride, list) else None,
        transposed=transposed,
    )
