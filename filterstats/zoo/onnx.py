"""Convolution filters read straight from an ``.onnx`` file (extra ``filterstats[onnx]``).

The paper's own pipeline (``paulgavrikov/onnxzoo2filterdb``) read its models as
ONNX graphs. This reader uses the ``onnx`` package only: no runtime, nothing in
the graph is executed.

**What is read.** Every ``Conv``, ``ConvTranspose``, ``QLinearConv`` and
``ConvInteger`` node, of every kernel size; the kernel size is then selected by
[`FilterSet.select`][filterstats.FilterSet.select], the one selection rule of
filterstats, so layers of other sizes are listed in ``skipped`` with its reason.
Weights are found whether the exporter stored them as initializers or as
``Constant`` nodes, also behind ``Identity``, ``Cast`` and ``Reshape`` nodes of
constants. Quantised weights are dequantised as ``(q - zero_point) * scale`` (per
tensor or per output channel): behind ``DequantizeLinear``, inside ``QLinearConv``,
and for ``ConvInteger`` where the graph holds the weight scale, i.e. onnxruntime's
dynamic-quantisation pattern ``ConvInteger -> Cast -> Mul(x_scale * w_scale)`` with
``w_scale`` a constant; a ``ConvInteger`` whose weight scale is not found is
skipped with a reason that says so.

**Layer names** (so that a torch model and its export match by name), by the first
rule that applies to the node:

1. torch's default (dynamo) exporter: the innermost module path of the node's
   ``pkg.torch.onnx.name_scopes`` metadata (``"layer1.0.conv1"``), provided the
   operator recorded in ``pkg.torch.onnx.class_hierarchy`` is a convolution.
   (When a BatchNorm was fused into the convolution, the metadata is the
   BatchNorm's; rule 3 applies.)
2. torch's TorchScript exporter (``dynamo=False``): the module scopes of the node
   name, the operator dropped; a scope that starts with the scope before it and a dot
   is a child of that container: ``"/layer1/layer1.0/conv1/Conv"`` ->
   ``"layer1.0.conv1"``, ``"/features/features.1/block/block.0/block.0.0/Conv"`` ->
   ``"features.1.block.0.0"``.
3. The weight's name without ``.weight`` (``"conv1.weight"`` -> ``"conv1"``): the
   parameter name under both exporters, also after BatchNorm folding.
4. The node name, else ``"<op_type>_<node index>"``.

An empty module path (the exported model is itself a convolution) is named
``ROOT_NAME`` (``"(root)"``), as in [`extract_filters`][filterstats.extract_filters].
The module path is preferred to the weight's name because tied weights make two
convolutions read one initializer (named after either module). Should two nodes
that read different weights get the same name, the later one is named after its
weight (rule 3), else ``"<name>@<n>"``.

**Shared weights.** Nodes that read the same stored tensor (the same initializer or
``Constant``, followed through the nodes above), or tensors of exactly equal values
that are not all one constant (the rule of every input,
[`shared_weights`][filterstats.extract.shared_weights]), are counted once: the
first in graph order is measured and lists the others in ``shared_with``; each
other is skipped with
``"shares its weight with '<first>' (counted once there)"``. Nodes with the same
name and weight (torch's dynamo exporter: a module called more than once) are one
layer, whose depth is that of its deepest call. The TorchScript exporter names a
module's later calls ``conv_1``, ``conv_2``, ...: those are listed as sharing the
weight of ``conv``.

**Depth** follows the paper: ``depth`` is the longest path, in graph nodes, from a
graph input to the convolution node (nodes that only compute constants are not on
any path); ``conv_depth`` is the rank of that depth among the distinct depths that
hold any convolution (every kernel size, skipped ones included);
``conv_depth_norm = conv_depth / (number of conv depths - 1)``.

**BatchNorm folding.** Exporters in eval mode fold each BatchNorm into the
convolution before it, so such a layer's filters are the folded ones (what
inference computes), not the ``conv.weight`` of the torch model. The TorchScript
exporter keeps them apart with ``training=torch.onnx.TrainingMode.PRESERVE``; the
dynamo exporter of torch 2.13 folds in either mode.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from filterstats._checks import normalize_kernel_size
from filterstats._optional import require
from filterstats.checkpoints import CheckpointError
from filterstats.extract import shared_weights
from filterstats.layers import ConvLayer, FilterSet, SkippedLayer, layer_name

__all__ = ["extract_onnx_filters"]

_CONV_OPS = ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger")
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_CLASSES_KEY = "pkg.torch.onnx.class_hierarchy"
# Where each operator keeps its weight, and the weight's zero point (QLinearConv: scale too).
_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "QLinearConv": 3, "ConvInteger": 1}


def extract_onnx_filters(
    path: str | os.PathLike[str], *, kernel_size: int | Sequence[int] | None = (3, 3)
) -> FilterSet:
    """Read the convolution filters of an ONNX model without running it.

    Every convolution of the graph is read, of every kernel size; ``kernel_size``
    then selects with [`FilterSet.select`][filterstats.FilterSet.select].

    Args:
        path: The ``.onnx`` file (external data next to it is read too).
        kernel_size: ``(3, 3)`` (exactly this size, the paper's), ``3`` (the same
            as ``(3, 3)``, as in ``nn.Conv2d``) or ``None`` (every size). Other sizes are listed in
            ``skipped``, with ``FilterSet.select``'s reason.

    Returns:
        A [`FilterSet`][filterstats.FilterSet] with ``depth_method="onnx"``: one
        layer per convolution, weights ``(C_out, C_in/groups, *k)`` as float32
        tensors on the CPU (``ConvTranspose`` weights permuted to this
        orientation), in graph order; ``kernel_size`` records the selection and
        ``order`` every convolution's name. Names follow the rule of this module's
        docstring (torch module paths for torch exports). Convolutions whose
        weight is computed at run time, a ``ConvInteger`` without a weight scale,
        and later users of a shared weight are skipped with the reason, keeping
        what is known of them (channels, groups, kernel, depth).

    Raises:
        CheckpointError: The file is missing or not an ONNX model.
        ModuleNotFoundError: ``onnx`` is not installed.
        TypeError: ``kernel_size`` is not ``None``, an int or a tuple of ints.

    Examples:
        >>> import torch, filterstats as fs
        >>> from filterstats.zoo.onnx import extract_onnx_filters
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 1))
        >>> torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), "net.onnx", dynamo=False)
        >>> filters = extract_onnx_filters("net.onnx")
        >>> filters.names, [s.reason for s in filters.skipped]
        (('0',), ['kernel size (1, 1) is not (3, 3)'])
    """
    wanted = normalize_kernel_size(kernel_size)
    onnx = require("onnx", extra="onnx")
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"ONNX file not found: {file.resolve()}")
    try:
        model = onnx.load(str(file))
    except Exception as error:
        raise CheckpointError(
            f"{file} is not a readable ONNX model ({type(error).__name__}: {error}); "
            "it may be truncated, or not an .onnx file."
        ) from error
    return _every_convolution(model.graph, onnx, file.name).select(wanted)


@dataclass
class _Conv:
    """One convolution (one or more graph nodes of one layer) while the graph is read."""

    name: str
    node: Any
    depth: int | None
    source: str | None  # the stored tensor its weight comes from
    weight: np.ndarray | None
    reason: str
    calls: list[int] = field(default_factory=list)


def _every_convolution(graph: Any, onnx: Any, source: str) -> FilterSet:
    constants, origins = _constants(graph, onnx)
    depths = _node_depths(graph, constants)
    producers = {name: node for node in graph.node for name in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    convs: list[_Conv] = []
    by_name: dict[str, _Conv] = {}
    for index, node in enumerate(graph.node):
        if node.op_type not in _CONV_OPS or node.domain not in ("", "ai.onnx"):
            continue
        weight_input = _input(node, _WEIGHT_INPUT[node.op_type])
        origin = origins.get(weight_input) if weight_input else None
        name = _node_name(node, index, weight_input, origins)
        earlier = by_name.get(name)
        if earlier is not None and origin is not None and earlier.source == origin:
            earlier.calls.append(index)  # the same module called again: one layer
            continue
        if earlier is not None:
            name = _unique_name(name, weight_input, origins, by_name)
        if node.op_type == "ConvInteger":
            weight, reason = _conv_integer_weight(node, constants, producers, consumers)
        else:
            weight, reason = _conv_weight(node, constants)
        conv = _Conv(name, node, None, origin, weight, reason, [index])
        convs.append(conv)
        by_name[name] = conv

    for conv in convs:
        call_depths = [depths[index] for index in conv.calls if index in depths]
        conv.depth = max(call_depths) if call_depths else None
    levels = sorted({conv.depth for conv in convs if conv.depth is not None})
    rank = {level: position for position, level in enumerate(levels)}
    span = max(len(levels) - 1, 1)

    items: list[ConvLayer | SkippedLayer] = []
    for conv in convs:
        conv_depth = None if conv.depth is None else rank[conv.depth]
        norm = None if conv_depth is None else conv_depth / span
        read = conv.weight is not None
        items.append(_layer(conv, conv_depth, norm) if read else _unread(conv, conv_depth, norm))
    items = _mark_shared(items, [conv.source for conv in convs])
    layers = [item for item in items if isinstance(item, ConvLayer)]
    skipped = [item for item in items if isinstance(item, SkippedLayer)]
    return FilterSet(
        tuple(layers),
        tuple(skipped),
        depth_method="onnx",
        source=source,
        kernel_size=None,
        order=tuple(conv.name for conv in convs),
    )


def _mark_shared(
    items: list[ConvLayer | SkippedLayer], sources: list[str | None]
) -> list[ConvLayer | SkippedLayer]:
    """Skip every later user of a weight and list its names on the first.

    A weight is shared when two nodes read the same stored tensor, or, by the rule
    of every input ([`shared_weights`][filterstats.extract.shared_weights]), when two
    tensors hold exactly equal values that are not all one constant.
    """
    positions = [i for i, item in enumerate(items) if isinstance(item, ConvLayer)]
    by_value = shared_weights([items[i].weight for i in positions])  # type: ignore[union-attr]
    first_reader: dict[str, int] = {}
    owner: dict[int, int] = {}  # position of a copy -> position of its first user
    for rank, position in enumerate(positions):
        source = sources[position]
        if source is not None and source in first_reader:
            owner[position] = first_reader[source]
        elif rank in by_value:
            owner[position] = positions[by_value[rank]]
        if source is not None:
            first_reader.setdefault(source, owner.get(position, position))
    result = list(items)
    copies: dict[int, list[str]] = {}
    for copy in sorted(owner):
        first = owner[copy]
        while first in owner:
            first = owner[first]
        layer = result[copy]
        assert isinstance(layer, ConvLayer)
        copies.setdefault(first, []).append(layer.name)
        reason = f"shares its weight with {items[first].name!r} (counted once there)"
        result[copy] = SkippedLayer.of(layer, reason)
    for first, names in copies.items():
        layer = result[first]
        assert isinstance(layer, ConvLayer)
        result[first] = replace(layer, shared_with=(*layer.shared_with, *names))
    return result


def _layer(conv: _Conv, conv_depth: int | None, norm: float | None) -> ConvLayer:
    node = conv.node
    groups = int(_attribute(node, "group", 1))
    assert conv.weight is not None
    tensor = torch.from_numpy(np.array(conv.weight, dtype=np.float32, copy=True))
    transposed = node.op_type == "ConvTranspose"
    if transposed:
        tensor = _transposed_to_out_in(tensor, groups)
    kernel = tuple(int(k) for k in tensor.shape[2:])
    strides = _attribute(node, "strides", None)
    return ConvLayer(
        name=conv.name,
        module_type=node.op_type,
        weight=tensor,
        in_channels=int(tensor.shape[1]) * groups,
        out_channels=int(tensor.shape[0]),
        groups=groups,
        kernel_size=kernel,
        stride=None if strides is None else tuple(int(s) for s in strides),
        transposed=transposed,
        depth=conv.depth,
        conv_depth=conv_depth,
        conv_depth_norm=norm,
    )


def _unread(conv: _Conv, conv_depth: int | None, norm: float | None) -> SkippedLayer:
    """A convolution whose weight could not be read, with what its attributes tell."""
    kernel = _attribute(conv.node, "kernel_shape", None)
    return SkippedLayer(
        conv.name,
        conv.node.op_type,
        conv.reason,
        groups=int(_attribute(conv.node, "group", 1)),
        kernel_size=None if kernel is None else tuple(int(k) for k in kernel),
        depth=conv.depth,
        conv_depth=conv_depth,
        conv_depth_norm=norm,
    )


# ------------------------------------------------------------------------------ names


def _node_name(node: Any, index: int, weight: str | None, origins: dict[str, str]) -> str:
    """A node's layer name by the rule of the module docstring."""
    path = _dynamo_module_path(node)
    if path is None:
        path = _scope_module_path(str(node.name))
    if path is None:
        path = _weight_module_path(weight, origins)
    if path is None:
        return str(node.name) or f"{node.op_type}_{index}"
    return layer_name(path)


def _dynamo_module_path(node: Any) -> str | None:
    metadata = {prop.key: prop.value for prop in node.metadata_props}
    try:
        scopes = ast.literal_eval(metadata[_SCOPES_KEY])
        classes = ast.literal_eval(metadata[_CLASSES_KEY])
    except (KeyError, ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not (isinstance(scopes, list) and isinstance(classes, list)) or len(scopes) < 2:
        return None  # the last entry is the operator; no module recorded
    # The operator is last in the class hierarchy: metadata of a conv node that some
    # other operator (a fused BatchNorm) was rewritten into is not the conv's own.
    if not classes or "conv" not in str(classes[-1]).lower():
        return None
    return str(scopes[-2])


def _scope_module_path(node_name: str) -> str | None:
    # torch's TorchScript exporter names nodes by module scope, the operator last. A
    # scope is an attribute name, or a child of a container written after the scope
    # before it: "/features/features.1/block/block.0/block.0.0/Conv" is the module
    # "features.1.block.0.0".
    if not node_name.startswith("/"):
        return None
    parts: list[str] = []
    previous = ""
    for scope in node_name.strip("/").split("/")[:-1]:
        if previous and scope.startswith(previous + "."):
            parts.append(scope[len(previous) + 1 :])
        else:
            parts.append(scope)
        previous = scope
    return ".".join(parts)


def _weight_module_path(weight: str | None, origins: dict[str, str]) -> str | None:
    for name in (weight, origins.get(weight or "")):
        if name == "weight":
            return ""
        if name and name.endswith(".weight"):
            return name[: -len(".weight")]
    return None


def _unique_name(
    name: str, weight: str | None, origins: dict[str, str], taken: dict[str, _Conv]
) -> str:
    path = _weight_module_path(weight, origins)
    if path is not None and layer_name(path) not in taken:
        return layer_name(path)
    count = 1
    while f"{name}@{count}" in taken:
        count += 1
    return f"{name}@{count}"


# ---------------------------------------------------------------------------- weights


def _constants(graph: Any, onnx: Any) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor whose value is known without input, and the stored tensor it is.

    Initializers and ``Constant`` nodes are stored tensors; ``Identity``, ``Cast``,
    ``Reshape`` and ``DequantizeLinear`` nodes of known tensors are followed.

    Returns:
        ``({tensor name: value}, {tensor name: name of the stored tensor it comes from})``.
    """
    helper = onnx.numpy_helper
    values = {init.name: helper.to_array(init) for init in graph.initializer}
    origins = {name: name for name in values}
    for node in graph.node:
        inputs = [name for name in node.input if name]
        known = bool(inputs) and all(name in values for name in inputs)
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = helper.to_array(attribute.t)
                    origins[node.output[0]] = node.output[0]
            continue
        if not known or node.domain not in ("", "ai.onnx"):
            continue
        try:
            value = _fold(node, [values[name] for name in inputs], onnx)
        except (ValueError, TypeError, IndexError, KeyError):
            value = None  # not foldable here: a conv reading it is "computed at run time"
        if value is not None:
            values[node.output[0]] = value
            origins[node.output[0]] = origins[inputs[0]]
    return values, origins


def _fold(node: Any, inputs: list[np.ndarray], onnx: Any) -> np.ndarray | None:
    """The value of an ``Identity``/``Cast``/``Reshape``/``DequantizeLinear`` of constants."""
    data = inputs[0]
    if node.op_type == "Identity":
        return data
    if node.op_type == "Cast":
        target = onnx.helper.tensor_dtype_to_np_dtype(_attribute(node, "to", 1))
        return np.asarray(data).astype(target)
    if node.op_type == "Reshape" and len(inputs) == 2:
        shape = [int(s) for s in inputs[1].reshape(-1)]
        # ONNX Reshape: 0 copies that dimension (allowzero=0, the default).
        return np.reshape(data, [data.shape[i] if s == 0 else s for i, s in enumerate(shape)])
    if node.op_type == "DequantizeLinear" and not _attribute(node, "block_size", 0):
        zero = inputs[2] if len(inputs) > 2 else 0  # blocked quantisation is not read
        return _dequantize(data, inputs[1], zero, int(_attribute(node, "axis", 1)))
    return None


def _per_axis(value: Any, ndim: int, axis: int) -> np.ndarray:
    """A scalar or 1-D per-axis value, shaped to broadcast along ``axis`` of ``ndim`` dims."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 1 and array.size > 1 and ndim > 1:
        shape = [1] * ndim
        shape[axis] = -1
        return array.reshape(shape)
    return array.reshape(()) if array.size == 1 else array


def _dequantize(quantized: np.ndarray, scale: Any, zero_point: Any, axis: int) -> np.ndarray:
    """``(q - zero_point) * scale`` in float64, per tensor or along ``axis``, as float32."""
    q = np.asarray(quantized, dtype=np.float64)
    result: np.ndarray = (q - _per_axis(zero_point, q.ndim, axis)) * _per_axis(scale, q.ndim, axis)
    return result.astype(np.float32)


def _input(node: Any, position: int) -> str | None:
    return (
        str(node.input[position]) if len(node.input) > position and node.input[position] else None
    )


def _conv_weight(node: Any, constants: dict[str, np.ndarray]) -> tuple[np.ndarray | None, str]:
    if node.op_type == "QLinearConv":
        names = node.input[3:6]
        if len(names) < 3 or not all(name in constants for name in names):
            return None, "quantised weight, scale or zero point is computed at run time"
        weight = _dequantize(constants[names[0]], constants[names[1]], constants[names[2]], 0)
    else:
        if len(node.input) < 2 or node.input[1] not in constants:
            return None, "weight is computed at run time, not stored in the file"
        weight = constants[node.input[1]]
    if weight.ndim < 3:
        return None, f"weight has shape {weight.shape}, expected (C_out, C_in/groups, *kernel)"
    if not np.issubdtype(weight.dtype, np.floating):
        return None, f"unsupported weight dtype {weight.dtype} for {node.op_type}"
    return weight, ""


def _conv_integer_weight(
    node: Any,
    constants: dict[str, np.ndarray],
    producers: dict[str, Any],
    consumers: dict[str, list[Any]],
) -> tuple[np.ndarray | None, str]:
    """``(w - w_zero_point) * w_scale`` of a ``ConvInteger``, with the scale from the graph.

    ``ConvInteger`` holds no scale: the graph rescales its int32 output. The weight
    scale is found in onnxruntime's dynamic-quantisation pattern: the output is cast
    to float and multiplied by ``x_scale * w_scale``, where ``x_scale`` is the
    activation's scale (from the ``DynamicQuantizeLinear``/``QuantizeLinear`` that
    feeds the node) and ``w_scale`` a constant, per tensor or per output channel.
    """
    weight_name, zero_name = _input(node, 1), _input(node, 3)
    if weight_name not in constants:
        return None, "quantised weight is computed at run time, not stored in the file"
    quantized = constants[str(weight_name)]
    if quantized.ndim < 3:
        return None, f"weight has shape {quantized.shape}, expected (C_out, C_in/groups, *kernel)"
    if zero_name is not None and zero_name not in constants:
        return None, "weight zero point is computed at run time"
    zero = constants[zero_name] if zero_name is not None else np.zeros(())
    out_channels = int(quantized.shape[0])
    if np.asarray(zero).size not in (1, out_channels):
        return (
            None,
            f"weight zero point of shape {np.shape(zero)} is neither per tensor nor per channel",
        )
    scale = _conv_integer_scale(node, quantized.ndim, out_channels, constants, producers, consumers)
    if isinstance(scale, str):
        return None, scale
    return _dequantize(quantized, scale, zero, 0), ""


def _conv_integer_scale(
    node: Any,
    ndim: int,
    out_channels: int,
    constants: dict[str, np.ndarray],
    producers: dict[str, Any],
    consumers: dict[str, list[Any]],
) -> np.ndarray | str:
    missing = (
        "ConvInteger: the weight scale is not in the graph (expected the output cast to "
        "float and multiplied by x_scale * w_scale, w_scale a constant); cannot dequantise"
    )
    activation = producers.get(node.input[0])
    x_scale = None
    if activation is not None and activation.op_type == "DynamicQuantizeLinear":
        x_scale = activation.output[1] if len(activation.output) > 1 else None
    elif activation is not None and activation.op_type == "QuantizeLinear":
        x_scale = _input(activation, 1)
    casts = [user for user in consumers.get(node.output[0], []) if user.op_type == "Cast"]
    if len(casts) != 1:
        return missing
    muls = [user for user in consumers.get(casts[0].output[0], []) if user.op_type == "Mul"]
    if len(muls) != 1:
        return missing
    factor = next((name for name in muls[0].input if name != casts[0].output[0]), None)
    scale = _weight_scale(factor, x_scale, constants, producers)
    if scale is None:
        return missing
    # The scale multiplies the output (N, C_out, *spatial): it must be one number or
    # vary along the output channels only.
    shape = (1,) * (ndim - scale.ndim) + scale.shape if scale.ndim <= ndim else None
    if scale.size == 1:
        return scale.reshape(())
    if shape is None or shape[1] != out_channels or np.prod(shape) != out_channels:
        return (
            f"ConvInteger: the weight scale of shape {scale.shape} is neither per tensor nor "
            "per output channel; cannot dequantise"
        )
    return scale.reshape(-1)


def _weight_scale(
    factor: str | None,
    x_scale: str | None,
    constants: dict[str, np.ndarray],
    producers: dict[str, Any],
) -> np.ndarray | None:
    """``w_scale`` from the output factor ``x_scale * w_scale``."""
    if factor is None:
        return None
    product = producers.get(factor)
    if product is not None and product.op_type == "Mul" and x_scale in product.input:
        others = [name for name in product.input if name != x_scale]
        if len(others) == 1 and others[0] in constants:
            return np.asarray(constants[others[0]], dtype=np.float64)
    if factor in constants and x_scale in constants:
        # a static activation scale folded into one constant
        return np.asarray(constants[factor], dtype=np.float64) / float(
            np.asarray(constants[str(x_scale)]).reshape(-1)[0]
        )
    return None


# ------------------------------------------------------------------------------ graph


def _node_depths(graph: Any, constants: dict[str, np.ndarray]) -> dict[int, int]:
    """Longest path (in nodes) from a graph input to each node that depends on one."""
    tensor_depth = {value.name: 0 for value in graph.input if value.name not in constants}
    node_depth = {}
    for index, node in enumerate(graph.node):  # ONNX requires nodes in topological order
        upstream = [tensor_depth[name] for name in node.input if name in tensor_depth]
        if not upstream:
            continue  # computes a constant: on no path from the input
        depth = max(upstream) + 1
        node_depth[index] = depth
        for name in node.output:
            tensor_depth[name] = depth
    return node_depth


def _transposed_to_out_in(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``ConvTranspose`` weight ``(C_in, C_out/g, *k)`` to ``(C_out, C_in/g, *k)``."""
    c_in, c_out_group, *kernel = weight.shape
    grouped = weight.reshape(groups, c_in // groups, c_out_group, *kernel).transpose(1, 2)
    return grouped.reshape(groups * c_out_group, c_in // groups, *kernel).contiguous()


def _attribute(node: Any, name: str, default: Any) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            if attribute.ints:
                return list(attribute.ints)
            return attribute.i
    return default
