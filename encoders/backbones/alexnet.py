"""AlexNet (conv1-5, fc6, fc7) as in torchvision, F7 = the 4096-d fc7 activation.

Built without weights; ``weights=PATH`` loads a local torchvision-layout state dict (its
``classifier.6`` ImageNet layer, fc8, is ignored). ``width`` and ``fc_dim`` shrink the
net for tests; at their defaults the layout and parameter names are torchvision's.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Output channels of conv1..conv5.
ALEXNET_CHANNELS = (64, 192, 384, 256, 256)
#: torchvision's final classifier (fc8), which a backbone drops.
FC8_PREFIX = "classifier.6."


def scale_width(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1."""
    return max(1, int(round(channels * width)))


class AlexNet(nn.Module):
    """``forward`` gives F7 ``(n, fc_dim)`` (fc7 after ReLU); :meth:`conv_trunk` gives conv1-5."""

    def __init__(self, width: float = 1.0, fc_dim: int = 4096, input_size: int = 224, dropout: float = 0.5) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (scale_width(c, width) for c in ALEXNET_CHANNELS)
        self.feature_dim = fc_dim
        self.map_channels = c5
        self.input_cfg = {"input_size": (3, input_size, input_size), "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(c5 * 36, fc_dim), nn.ReLU(inplace=True),  # fc6
            nn.Dropout(dropout), nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True),  # fc7
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(images)), 1))

    def conv_trunk(self) -> nn.Module:
        """conv1-conv5 (after ReLU, before pool5): images -> ``(n, map_channels, h, w)``."""
        return self.features[:-1]


@register_backbone
def alexnet(weights: str | None = None, width: float = 1.0, fc_dim: int = 4096, input_size: int = 224) -> AlexNet:
    """AlexNet, 4096-d F7 (fc7). No weights unless ``weights=PATH`` (a local state dict)."""
    from .weights import load_local_weights

    return load_local_weights(AlexNet(width, fc_dim, input_size), weights, ignore_prefixes=(FC8_PREFIX,))
