"""Custom convolutions: measure the weight a module really convolves with.

A module that transforms its weight in ``forward`` (here weight standardisation) is
measured with its stored weight unless filterstats is told how to get the effective
one. A module that is no ``torch.nn`` convolution at all can be registered too.
Random weights, plain torch, offline, a second.

    python examples/custom_conv_registry.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import filterstats as fs


def standardize(weight: torch.Tensor) -> torch.Tensor:
    mean = weight.mean(dim=(1, 2, 3), keepdim=True)
    return (weight - mean) / weight.std(dim=(1, 2, 3), keepdim=True)


class StandardizedConv(nn.Conv2d):
    """A Conv2d subclass that standardises its weight in forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve with the standardised weight."""
        return self._conv_forward(x, standardize(self.weight), self.bias)


class LowRankConv(nn.Module):
    """Not an nn.Conv2d: the kernel is the product of two factors."""

    def __init__(self, in_channels: int, out_channels: int, rank: int = 4) -> None:
        super().__init__()
        self.left = nn.Parameter(torch.randn(out_channels, rank))
        self.right = nn.Parameter(torch.randn(rank, in_channels * 9))
        self.in_channels, self.out_channels = in_channels, out_channels

    def kernel(self) -> torch.Tensor:
        """The effective weight ``(C_out, C_in, 3, 3)``."""
        return (self.left @ self.right).reshape(self.out_channels, self.in_channels, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve with the low-rank kernel."""
        return F.conv2d(x, self.kernel(), padding=1)


def main() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        StandardizedConv(3, 16, 3, padding=1), nn.ReLU(),
        LowRankConv(16, 32), nn.ReLU(),
        StandardizedConv(32, 32, 3, padding=1),
    )  # fmt: skip
    with torch.no_grad():
        net[0].weight.add_(3.0)  # a large offset that standardisation removes

    before = fs.extract_filters(net)
    print("before registering:", before.names, "skipped:", [s.name for s in before.skipped])

    fs.register_effective_weight(StandardizedConv, lambda conv: standardize(conv.weight))
    fs.register_effective_weight(LowRankConv, lambda conv: conv.kernel())

    after = fs.extract_filters(net)
    print("after registering: ", after.names)
    assert after.names == ("0", "2", "4")
    # The extracted weight is the one forward uses, not the stored one.
    torch.testing.assert_close(after["0"].weight, standardize(net[0].weight))
    torch.testing.assert_close(after["2"].weight, net[2].kernel())
    # A rank-4 layer: its 32 output filters span only 4 directions.
    print(fs.analyze(after, label="custom"))


if __name__ == "__main__":
    main()
