"""Convolution filters read straight from an ``.onnx`` file (extra ``filterstats[onnx]``).

The paper's own pipeline (``paulgavrikov/onnxzoo2filterdb``) read its models as
ONNX graphs. This reader uses the ``onnx`` package only: no runtime, nothing in
the graph is executed. Weights are found whether the exporter stored them as
initializers or as ``Constant`` nodes (also behind ``Identity`` nodes), and
quantised weights behind ``DequantizeLinear`` or inside ``QLinearConv`` are
dequantised as ``(q - zero_point) * scale`` (per tensor or per output channel).

Depth follows the paper: ``depth`` is the longest path, in graph nodes, from a
graph input to the convolution node (nodes that only compute constants are not
on any path); ``conv_depth`` is the rank of that depth among the distinct
depths that hold any convolution (every kernel size, skipped ones included);
``conv_depth_norm = conv_depth / (number of conv depths - 1)``.

Exporters in eval mode fold each BatchNorm into the convolution before it, so
such a layer's filters are the folded ones (what inference computes), not the
``conv.weight`` of the torch model; export with
``training=torch.onnx.TrainingMode.PRESERVE`` to keep them apart.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from filterstats._optional import require
from filterstats.checkpoints import CheckpointError
from filterstats.layers import ConvLayer, FilterSet, SkippedLayer

__all__ = ["extract_onnx_filters"]

_CONV_OPS = ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger")


def extract_onnx_filters(
    path: str | os.PathLike[str], *, kernel_size: Sequence[int] | None = (3, 3)
) -> FilterSet:
    """Read the convolution filters of an ONNX model without running it.

    Args:
        path: The ``.onnx`` file (external data next to it is read too).
        kernel_size: Keep convolutions with exactly this spatial kernel size;
            ``None`` keeps every size. Others are listed in ``skipped``.

    Returns:
        A [`FilterSet`][filterstats.FilterSet] with ``depth_method="onnx"``: one
        layer per convolution node, weights ``(C_out, C_in/groups, *k)`` as float
        tensors on the CPU (``ConvTranspose`` weights permuted to this
        orientation), in graph order. Layers are named after their weight
        (``"layer1.0.conv1"`` for a ``layer1.0.conv1.weight`` initializer), else
        after the node. Convolutions whose weight is computed at run time, or
        ``ConvInteger`` (no weight scale), are skipped with the reason.

    Raises:
        CheckpointError: The file is missing or not an ONNX model.
        ModuleNotFoundError: ``onnx`` is not installed.
    """
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
    wanted = None if kernel_size is None else tuple(int(k) for k in kernel_size)
    graph = model.graph
    constants = _constants(graph, onnx)
    depths = _node_depths(graph, constants)

    found: list[tuple[int, Any, str, np.ndarray | None, str]] = []
    for index, node in enumerate(graph.node):
        if node.op_type not in _CONV_OPS:
            continue
        weight, reason = _conv_weight(node, constants)
        name = _layer_name(node, index)
        found.append((index, node, name, weight, reason))

    conv_depths = sorted({depths[index] for index, *_ in found if index in depths})
    rank = {depth: position for position, depth in enumerate(conv_depths)}
    span = max(len(conv_depths) - 1, 1)

    layers: list[ConvLayer] = []
    skipped: list[SkippedLayer] = []
    first_user: dict[int, int] = {}
    for index, node, name, weight, reason in found:
        if weight is None:
            skipped.append(SkippedLayer(name, node.op_type, reason))
            continue
        # Identity nodes alias the very same array: identity of the stored array finds sharing.
        weight_name = id(constants[node.input[3 if node.op_type == "QLinearConv" else 1]])
        if weight_name in first_user:
            owner = layers[first_user[weight_name]]
            layers[first_user[weight_name]] = _with_shared(owner, name)
            reason = f"shares its weight with {owner.name!r} (counted once there)"
            skipped.append(SkippedLayer(name, node.op_type, reason))
            continue
        groups = _attribute(node, "group", 1)
        tensor = torch.from_numpy(np.array(weight, dtype=np.float32, copy=True))
        transposed = node.op_type == "ConvTranspose"
        if transposed:
            tensor = _transposed_to_out_in(tensor, groups)
        kernel = tuple(int(k) for k in tensor.shape[2:])
        if wanted is not None and kernel != wanted:
            skipped.append(
                SkippedLayer(name, node.op_type, f"kernel size {kernel} is not {wanted}")
            )
            continue
        depth = depths.get(index)
        conv_depth = rank.get(depth) if depth is not None else None
        strides = _attribute(node, "strides", None)
        layer = ConvLayer(
            name=name,
            module_type=node.op_type,
            weight=tensor,
            in_channels=int(tensor.shape[1]) * groups,
            out_channels=int(tensor.shape[0]),
            groups=groups,
            kernel_size=kernel,
            stride=None if strides is None else tuple(int(s) for s in strides),
            transposed=transposed,
            depth=depth,
            conv_depth=conv_depth,
            conv_depth_norm=None if conv_depth is None else conv_depth / span,
        )
        first_user[weight_name] = len(layers)
        layers.append(layer)
    return FilterSet(tuple(layers), tuple(skipped), depth_method="onnx", source=file.name)


def _constants(graph: Any, onnx: Any) -> dict[str, np.ndarray]:
    """Every tensor whose value is known without input.

    Initializers, ``Constant`` nodes, and ``Identity``/``DequantizeLinear`` nodes of known tensors.
    """
    helper = onnx.numpy_helper
    values = {init.name: helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = helper.to_array(attribute.t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
        elif node.op_type == "DequantizeLinear" and all(
            name in values for name in node.input if name
        ):
            zero = values[node.input[2]] if len(node.input) > 2 and node.input[2] else 0
            values[node.output[0]] = _dequantize(
                values[node.input[0]], values[node.input[1]], zero, _attribute(node, "axis", 1)
            )
    return values


def _dequantize(quantized: np.ndarray, scale: Any, zero_point: Any, axis: int) -> np.ndarray:
    scale = np.asarray(scale, dtype=np.float32)
    zero = np.asarray(zero_point, dtype=np.float32)
    if scale.ndim == 1 and quantized.ndim > 1:
        shape = [1] * quantized.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = zero.reshape(shape) if zero.ndim == 1 else zero
    result: np.ndarray = (quantized.astype(np.float32) - zero) * scale
    return result


def _conv_weight(node: Any, constants: dict[str, np.ndarray]) -> tuple[np.ndarray | None, str]:
    if node.op_type == "ConvInteger":
        return None, "ConvInteger stores integer weights without a scale; cannot dequantise"
    if node.op_type == "QLinearConv":
        names = node.input[3:6]
        if not all(name in constants for name in names):
            return None, "quantised weight, scale or zero point is computed at run time"
        return _dequantize(constants[names[0]], constants[names[1]], constants[names[2]], 0), ""
    if len(node.input) < 2 or node.input[1] not in constants:
        return None, "weight is computed at run time, not stored in the file"
    weight = constants[node.input[1]]
    if weight.ndim < 3:
        return None, f"weight has shape {weight.shape}, expected (C_out, C_in/groups, *kernel)"
    return weight, ""


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


def _layer_name(node: Any, index: int) -> str:
    weight = str(node.input[3] if node.op_type == "QLinearConv" else node.input[1])
    if weight.endswith(".weight"):
        return weight[: -len(".weight")]
    if node.name.startswith("/"):
        # torch's exporter names nodes by module scope: "/layer1/layer1.0/conv1/Conv".
        path = ""
        for part in node.name.strip("/").split("/")[:-1]:
            path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
        if path:
            return path
    return str(node.name) or f"{node.op_type}_{index}"


def _attribute(node: Any, name: str, default: Any) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            if attribute.ints:
                return list(attribute.ints)
            return attribute.i
    return default


def _with_shared(layer: ConvLayer, other: str) -> ConvLayer:
    from dataclasses import replace

    return replace(layer, shared_with=(*layer.shared_with, other))
