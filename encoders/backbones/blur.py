"""A fixed Gaussian low-pass filter, used as a noise-robust input stem."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of standard deviation ``sigma`` px, radius ``ceil(3 sigma)``."""
    if sigma <= 0:
        raise ValueError(f"blur sigma must be > 0, got {sigma}")
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


class GaussianBlur(nn.Module):
    """Separable Gaussian blur of every channel, edges padded by replication; no parameters.

    The kernel is rebuilt from ``sigma`` (a non-persistent buffer), so a model file stores the
    sigma in its config, not the kernel. The kernel sums to 1 and the padding replicates, so the
    blur commutes with the per-channel affine normalisation of the inputs."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.register_buffer("kernel", gaussian_kernel(self.sigma), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        channels, radius = images.shape[1], len(self.kernel) // 2
        k = self.kernel.to(images.dtype)
        out = F.pad(images, (radius, radius, radius, radius), mode="replicate")
        out = F.conv2d(out, k.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        return F.conv2d(out, k.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"
