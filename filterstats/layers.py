"""Typed, immutable containers for extracted convolution filters."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

from torch import Tensor

__all__ = ["ConvLayer", "FilterSet", "SkippedLayer"]


@dataclass(frozen=True, eq=False)
class ConvLayer:
    """One convolution's effective weight and its metadata.

    Attributes:
        name: Full module path (``"layer1.0.conv1"``), wrapper prefixes such as
            ``module.`` and ``_orig_mod.`` stripped.
        module_type: Class name of the module (``"Conv2d"``), or ``"tensor"``.
        weight: Effective weight ``(C_out, C_in / groups, *kernel_size)``, on the
            model's device and dtype; a view of the parameter where possible.
            Transposed convolutions are permuted to this out x in orientation.
        in_channels: Input channels of the whole convolution (all groups).
        out_channels: Output channels (filters).
        groups: Convolution groups, ``None`` when unknown (state dicts).
        kernel_size: Spatial kernel size, e.g. ``(3, 3)``.
        stride: Stride, ``None`` when unknown (state dicts).
        transposed: Whether the module is a transposed convolution.
        depth: Longest path (in graph nodes) from the model input, or the
            registration index when the graph could not be traced.
        conv_depth: Rank of ``depth`` among the distinct depths that hold any
            convolution (all kernel sizes), starting at 0.
        conv_depth_norm: ``conv_depth / (number of conv depths - 1)``: 0 for the
            first convolution, 1 for the last; 0 when the model has one conv depth.
        shared_with: Names of other modules that use this very weight (counted once).
    """

    name: str
    module_type: str
    weight: Tensor
    in_channels: int
    out_channels: int
    groups: int | None = 1
    kernel_size: tuple[int, ...] = (3, 3)
    stride: tuple[int, ...] | None = None
    transposed: bool = False
    depth: int | None = None
    conv_depth: int | None = None
    conv_depth_norm: float | None = None
    shared_with: tuple[str, ...] = ()

    @property
    def n_filters(self) -> int:
        """Number of 2-D kernels (``C_out * C_in / groups``) in the layer."""
        return int(self.weight.shape[0] * self.weight.shape[1])

    @property
    def kernel_matrix(self) -> Tensor:
        """The kernels as rows: shape ``(n_filters, prod(kernel_size))``."""
        return self.weight.reshape(self.n_filters, math.prod(self.weight.shape[2:]))

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.weight.shape)
        return (
            f"ConvLayer(name={self.name!r}, type={self.module_type}, weight={shape}, "
            f"groups={self.groups}, conv_depth={self.conv_depth})"
        )


@dataclass(frozen=True)
class SkippedLayer:
    """A convolution that was found but not selected, and why.

    Attributes:
        name: Full module path.
        module_type: Class name of the module.
        reason: Human-readable reason, e.g. ``"kernel size (1, 1) is not (3, 3)"``.
    """

    name: str
    module_type: str
    reason: str


@dataclass(frozen=True, eq=False)
class FilterSet(Sequence[ConvLayer]):
    """The selected convolutions of one model, plus every skipped one.

    Behaves as a read-only sequence of [`ConvLayer`][filterstats.ConvLayer]; index
    by position or by layer name. ``len(layers) + len(skipped)`` equals the number
    of convolution modules found.

    Attributes:
        layers: Selected layers, in ``named_modules()`` order.
        skipped: Convolutions not selected, each with its reason.
        depth_method: How depths were obtained: ``"fx"``, ``"forward"``,
            ``"onnx"``, ``"registration"`` or ``"state_dict"``.
        source: Description of the input (model class name, file name).
    """

    layers: tuple[ConvLayer, ...]
    skipped: tuple[SkippedLayer, ...] = ()
    depth_method: str = "registration"
    source: str = ""
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {layer.name: i for i, layer in enumerate(self.layers)})

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[ConvLayer]:
        return iter(self.layers)

    @overload
    def __getitem__(self, key: int | str) -> ConvLayer: ...

    @overload
    def __getitem__(self, key: slice) -> FilterSet: ...

    def __getitem__(self, key: int | str | slice) -> ConvLayer | FilterSet:
        if isinstance(key, str):
            try:
                return self.layers[self._index[key]]
            except KeyError:
                raise KeyError(
                    f"no selected layer named {key!r}; selected: {list(self._index)[:8]}"
                    f"{'...' if len(self._index) > 8 else ''}"
                ) from None
        if isinstance(key, slice):
            return FilterSet(self.layers[key], self.skipped, self.depth_method, self.source)
        return self.layers[key]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            return key in self._index
        return key in self.layers

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the selected layers."""
        return tuple(layer.name for layer in self.layers)

    @property
    def weights(self) -> tuple[Tensor, ...]:
        """Effective weights of the selected layers."""
        return tuple(layer.weight for layer in self.layers)

    @property
    def n_filters(self) -> int:
        """Total number of kernels over all selected layers."""
        return sum(layer.n_filters for layer in self.layers)

    def __repr__(self) -> str:
        lines = [
            f"FilterSet({self.source or 'model'}: {len(self.layers)} layers, "
            f"{self.n_filters:,} filters, {len(self.skipped)} skipped, "
            f"depth by {self.depth_method})"
        ]
        for layer in self.layers[:20]:
            shape = "x".join(str(s) for s in layer.weight.shape)
            kind = f"{layer.module_type:<16} {shape:<16}"
            lines.append(f"  {layer.name:<40} {kind} d={layer.conv_depth}")
        if len(self.layers) > 20:
            lines.append(f"  ... {len(self.layers) - 20} more")
        for skip in self.skipped[:10]:
            lines.append(f"  skipped {skip.name}: {skip.reason}")
        if len(self.skipped) > 10:
            lines.append(f"  ... {len(self.skipped) - 10} more skipped")
        return "\n".join(lines)
