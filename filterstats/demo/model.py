"""``DemoNet``: a small all-3x3 CNN for scikit-learn's 8x8 handwritten digits."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DEMO_WIDTHS", "DemoNet"]

#: Output channels of the five 3x3 convolutions, first to last.
DEMO_WIDTHS: tuple[int, int, int, int, int] = (16, 32, 32, 64, 64)


class DemoNet(nn.Module):
    """Five 3x3 convolutions, two max-pools, global average pooling, a linear head.

    Input ``(N, 1, 8, 8)`` grey-scale digits with pixel values in [0, 1]
    (scikit-learn's ``load_digits`` images divided by 16). Every convolution is
    3x3 with padding 1 and a bias, followed by ReLU; ``conv2`` and ``conv4`` are
    followed by a 2x2 max-pool (8x8 -> 4x4 -> 2x2). There is no normalisation
    layer, so the extracted weights are exactly the filters the network applies.

    Attributes:
        conv1 … conv5: The 3x3 convolutions, widths :data:`DEMO_WIDTHS`.
        head: Linear classifier ``(64 -> num_classes)``.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = DEMO_WIDTHS
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1)
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1)
        self.head = nn.Linear(c5, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Classify a batch of digits.

        Args:
            x: Images ``(N, 1, 8, 8)``, pixel values in [0, 1].

        Returns:
            Logits ``(N, num_classes)``.
        """
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        x = F.max_pool2d(F.relu(self.conv4(x)), 2)
        x = F.relu(self.conv5(x))
        logits: Tensor = self.head(x.mean(dim=(2, 3)))
        return logits
