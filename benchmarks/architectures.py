"""Benchmark architectures in plain torch: WRN-70-16, WRN-28-10 and ResNet-50.

No torchvision, no downloads. The layouts follow the published architectures:

- ``wrn_70_16``: the wide ResNet of RobustBench's ``Gowal2020Uncovering_70_16`` (depth 70,
  width 16; 67 3x3 convolutions, 29.6 M 3x3 kernels, about 1.06 GB of float32 weights).
- ``wrn_28_10``: the CIFAR wide ResNet of Zagoruyko & Komodakis (25 3x3 convolutions).
- ``resnet50``: torchvision's ResNet-50 (v1.5, stride in the 3x3 conv; 16 3x3 convolutions).

Weights are seeded (``torch.Generator``) and include sparse filters: a share of kernels is
set to zero and another share is scaled to tiny values, so that sparsity and the "clean"
entropy have work to do. Building does not run a forward pass, so it is quick even for the
largest model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["MODELS", "build", "resnet50", "small_cnn", "sparsify_", "wide_resnet"]


class _WideBlock(nn.Module):
    """Pre-activation wide-ResNet block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 (+1x1 shortcut)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)
            if c_in != c_out or stride != 1
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + skip


def wide_resnet(depth: int, width: int, num_classes: int = 10) -> nn.Module:
    """A CIFAR wide ResNet (``depth = 6 n + 4``), as RobustBench's DMWideResNet lays it out.

    Args:
        depth: Total depth; ``(depth - 4) / 6`` blocks per group.
        width: Width multiplier of the three groups (16, 32, 64 channels times width).
        num_classes: Output classes.

    Returns:
        The model, with PyTorch's default initialisation.
    """
    if (depth - 4) % 6:
        raise ValueError(f"`depth` must be 6 n + 4, got {depth}.")
    blocks = (depth - 4) // 6
    channels = [16, 16 * width, 32 * width, 64 * width]
    layers: list[nn.Module] = [nn.Conv2d(3, channels[0], 3, 1, 1, bias=False)]
    for group in range(3):
        for block in range(blocks):
            c_in = channels[group] if block == 0 else channels[group + 1]
            stride = 1 if group == 0 or block > 0 else 2
            layers.append(_WideBlock(c_in, channels[group + 1], stride))
    layers += [
        nn.BatchNorm2d(channels[3]),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels[3], num_classes),
    ]
    return nn.Sequential(*layers)


class _Bottleneck(nn.Module):
    """torchvision's ResNet-50 bottleneck (1x1, 3x3 with stride, 1x1; expansion 4)."""

    def __init__(self, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(c_in, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
            if stride != 1 or c_in != planes * 4
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(out + skip)


def resnet50(num_classes: int = 1000) -> nn.Module:
    """ResNet-50 in torchvision's layout (blocks 3, 4, 6, 3; 7x7 stem).

    Args:
        num_classes: Output classes.

    Returns:
        The model, with PyTorch's default initialisation.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    c_in = 64
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for block in range(blocks):
            layers.append(_Bottleneck(c_in, planes, stride if block == 0 else 1))
            c_in = planes * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


def small_cnn() -> nn.Module:
    """A few small 3x3 layers, for the ``--quick`` smoke run."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
    )


def sparsify_(
    model: nn.Module,
    generator: torch.Generator,
    *,
    zero_share: float = 0.05,
    tiny_share: float = 0.05,
) -> nn.Module:
    """Give every conv layer some sparse kernels, in place (this is our own model).

    Args:
        model: Freshly built benchmark model.
        generator: Seeded generator.
        zero_share: Share of kernels set to zero.
        tiny_share: Share of kernels scaled by 1e-4 (below the 1 % sparsity threshold).

    Returns:
        ``model``.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                kernels = module.weight.view(module.weight.shape[0] * module.weight.shape[1], -1)
                draw = torch.rand(kernels.shape[0], generator=generator)
                kernels[draw < zero_share] = 0.0
                tiny = (draw >= zero_share) & (draw < zero_share + tiny_share)
                kernels[tiny] *= 1e-4
    return model


def _seeded(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # nn.Module default init draws from the global generator
    with torch.no_grad():
        model = factory()
    return sparsify_(model.eval(), generator)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "WRN-70-16": lambda: wide_resnet(70, 16),
    "WRN-28-10": lambda: wide_resnet(28, 10),
    "ResNet-50": resnet50,
    "small-cnn": small_cnn,
    "WRN-16-2": lambda: wide_resnet(16, 2),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """Build a benchmark model by name with seeded, partly sparse weights.

    Args:
        name: A key of ``MODELS``.
        seed: Seed of the weights.

    Returns:
        The model in eval mode.
    """
    if name not in MODELS:
        raise ValueError(f"`name` must be one of {sorted(MODELS)}, got {name!r}.")
    return _seeded(MODELS[name], seed)
