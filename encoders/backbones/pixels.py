"""Raw pixels as features: what the classical hashing literature feeds its baselines on
MNIST-like data, and a sensible input for unsupervised methods on small greyscale images."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_backbone


class Pixels(nn.Module):
    """The image resized to ``input_size`` x ``input_size``, greyscale (channel mean) or RGB,
    flattened; values in [0, 1]. Has no parameters."""

    def __init__(self, input_size: int = 28, grey: bool = True) -> None:
        super().__init__()
        self.grey = bool(grey)
        self.feature_dim = input_size * input_size * (1 if grey else 3)
        self.input_cfg = {"input_size": (3, input_size, input_size), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.mean(dim=1) if self.grey else images).flatten(1)


@register_backbone
def pixels(input_size: int = 28, grey: bool = True) -> Pixels:
    """Raw pixels, ``input_size`` px (default 28, MNIST's size), greyscale unless ``grey=False``."""
    return Pixels(input_size, grey)
