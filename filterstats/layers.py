"""Typed, immutable containers for extracted convolution filters."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

from torch import Tensor

from filterstats._checks import normalize_kernel_size
from filterstats._text import plural

__all__ = [
    "ROOT_NAME",
    "ConvLayer",
    "FilterSet",
    "KernelSelection",
    "SkippedLayer",
    "kernel_matches",
    "layer_kind",
    "layer_name",
    "selection_text",
]


def layer_kind(groups: int | None, in_channels: int | None) -> str:
    """How a convolution connects its inputs: ``"dense"``, ``"grouped"`` or ``"depthwise"``.

    Args:
        groups: Convolution groups (``None``: unknown, as for state dicts).
        in_channels: Input channels of the whole convolution (all groups).

    Returns:
        ``"dense"`` for one group, ``"depthwise"`` for one input channel per group,
        ``"grouped"`` for other groupings, ``""`` when the groups are unknown.
    """
    if groups is None:
        return ""
    if groups <= 1:
        return "dense"
    if in_channels is not None and in_channels == groups:
        return "depthwise"
    return "grouped"


#: Name of a convolution that is the model itself (``fs.analyze(nn.Conv2d(...))``, or a
#: state dict whose weight key is plain ``"weight"``): its module path is empty.
ROOT_NAME = "(root)"

#: A kernel-size selection: a tuple (exactly this size), an int ``k`` (``(k, k)``, as
#: ``nn.Conv2d(kernel_size=k)`` and the command line's ``--kernel-size k``) or ``None``
#: (every size).
KernelSelection = int | tuple[int, ...] | None


def layer_name(module_path: str) -> str:
    """The layer name of a module path: the path itself, ``ROOT_NAME`` for ``""``.

    Args:
        module_path: Dotted path as in ``named_modules()`` (``"layer1.0.conv1"``).

    Returns:
        The name used in every table.
    """
    return module_path or ROOT_NAME


def kernel_matches(kernel: tuple[int, ...], wanted: KernelSelection) -> bool:
    """Whether a kernel size is selected by ``wanted`` (see ``KernelSelection``).

    Args:
        kernel: Spatial kernel size, e.g. ``(3, 3)``.
        wanted: The selection.

    Returns:
        ``True`` when the kernel is selected.
    """
    if wanted is None:
        return True
    if isinstance(wanted, int):  # as nn.Conv2d(kernel_size=k): (k, k)
        wanted = (wanted, wanted)
    return tuple(kernel) == tuple(wanted)


def selection_text(wanted: KernelSelection) -> str:
    """A selection as recorded in reports: ``"3x3"`` (also for the int ``3``) or ``"all"``.

    Args:
        wanted: The selection.

    Returns:
        The text.
    """
    if wanted is None:
        return "all"
    if isinstance(wanted, int):  # as nn.Conv2d(kernel_size=k): (k, k)
        wanted = (wanted, wanted)
    return "x".join(str(k) for k in wanted)


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

    What is known of the layer is kept (a layer skipped for its kernel size still
    has its channels, kernel and depth); the rest is ``None``.

    Attributes:
        name: Full module path.
        module_type: Class name of the module.
        reason: Human-readable reason, e.g. ``"kernel size (1, 1) is not (3, 3)"``.
        in_channels: Input channels, when known.
        out_channels: Output channels, when known.
        groups: Convolution groups, when known.
        kernel_size: Spatial kernel size, when known.
        depth: Graph depth, when known.
        conv_depth: Conv depth rank, when known.
        conv_depth_norm: Normalised conv depth, when known.
    """

    name: str
    module_type: str
    reason: str
    in_channels: int | None = None
    out_channels: int | None = None
    groups: int | None = None
    kernel_size: tuple[int, ...] | None = None
    depth: int | None = None
    conv_depth: int | None = None
    conv_depth_norm: float | None = None

    @classmethod
    def of(cls, layer: ConvLayer, reason: str) -> SkippedLayer:
        """A skipped entry for a layer that was read, keeping its metadata.

        Args:
            layer: The layer.
            reason: Why it is not measured.

        Returns:
            The entry.
        """
        return cls(
            layer.name,
            layer.module_type,
            reason,
            in_channels=layer.in_channels,
            out_channels=layer.out_channels,
            groups=layer.groups,
            kernel_size=layer.kernel_size,
            depth=layer.depth,
            conv_depth=layer.conv_depth,
            conv_depth_norm=layer.conv_depth_norm,
        )


@dataclass(frozen=True, eq=False)
class FilterSet(Sequence[ConvLayer]):
    """The selected convolutions of one model, plus every skipped one.

    Behaves as a read-only sequence of [`ConvLayer`][filterstats.ConvLayer]; index
    by position or by layer name. ``len(layers) + len(skipped)`` equals the number
    of convolution modules found.

    Kernel sizes are selected in one place, [`select`][filterstats.FilterSet.select];
    ``kernel_size`` records the selection applied so far (``None``: every size).

    Attributes:
        layers: Selected layers, in ``named_modules()`` order.
        skipped: Convolutions not selected, each with its reason, in model order.
        depth_method: How depths were obtained: ``"fx"``, ``"forward"``, ``"torchscript"``,
            ``"onnx"``, ``"registration"`` or ``"state_dict"``.
        source: Description of the input (model class name, file name).
        kernel_size: The kernel-size selection applied (``None``: every size).
        order: Names of every convolution found (layers and skipped), in model
            order; keeps ``skipped`` in that order after a selection.
    """

    layers: tuple[ConvLayer, ...]
    skipped: tuple[SkippedLayer, ...] = ()
    depth_method: str = "registration"
    source: str = ""
    kernel_size: KernelSelection = None
    order: tuple[str, ...] = ()
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {layer.name: i for i, layer in enumerate(self.layers)})
        if not self.order:
            names = [layer.name for layer in self.layers] + [s.name for s in self.skipped]
            object.__setattr__(self, "order", tuple(names))

    def select(self, kernel_size: KernelSelection) -> FilterSet:
        """The layers of one kernel size; the others move to ``skipped`` with the reason.

        The one place where filterstats selects kernel sizes: every function that
        takes a model calls it. A selection narrows: selecting ``None`` (every size)
        on a set already selected keeps that selection (``kernel_size`` says which
        was applied).

        Args:
            kernel_size: ``(3, 3)`` (exactly this size), ``3`` (the same as ``(3, 3)``,
                as in ``nn.Conv2d``) or ``None`` (every size).

        Returns:
            The selected set (``self`` when nothing changes).

        Examples:
            >>> import torch, filterstats as fs
            >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 1))
            >>> every = fs.extract_filters(net, kernel_size=None)
            >>> every.select((3, 3)).names, [s.reason for s in every.select((3, 3)).skipped]
            (('0',), ['kernel size (1, 1) is not (3, 3)'])
        """
        wanted = normalize_kernel_size(kernel_size)
        if wanted is None or wanted == self.kernel_size:
            return self
        keep = [layer for layer in self.layers if kernel_matches(layer.kernel_size, wanted)]
        moved = [
            SkippedLayer.of(layer, f"kernel size {layer.kernel_size} is not {_describe(wanted)}")
            for layer in self.layers
            if not kernel_matches(layer.kernel_size, wanted)
        ]
        position = {name: i for i, name in enumerate(self.order)}
        skipped = sorted(
            [*self.skipped, *moved], key=lambda item: position.get(item.name, len(position))
        )
        return FilterSet(
            tuple(keep),
            tuple(skipped),
            self.depth_method,
            self.source,
            kernel_size=wanted,
            order=self.order,
        )

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
            return FilterSet(
                self.layers[key],
                self.skipped,
                self.depth_method,
                self.source,
                kernel_size=self.kernel_size,
                order=self.order,
            )
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
            f"FilterSet({self.source or 'model'}: {plural(len(self.layers), 'layer')}, "
            f"{self.n_filters:,} filters, {len(self.skipped)} skipped, "
            f"kernel {selection_text(self.kernel_size)}, depth by {self.depth_method})"
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


def _describe(wanted: KernelSelection) -> str:
    return str((wanted, wanted) if isinstance(wanted, int) else wanted)
