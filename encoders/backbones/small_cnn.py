"""A small CNN that trains on a CPU in seconds: for tests, the demo and small images.

``blur_sigma`` > 0 puts a fixed Gaussian low-pass filter (:class:`~.blur.GaussianBlur`) before
the first convolution, the same at training, database and query time: pixel noise that the
training images never showed is damped before the network sees it."""

from __future__ import annotations

from torch import nn

from ..registry import register_backbone
from .blur import GaussianBlur

GREY_MEAN = (0.5, 0.5, 0.5)
GREY_STD = (0.5, 0.5, 0.5)


class SmallCNN(nn.Module):
    """An optional blur stem, three conv blocks and one fully connected layer ("F7",
    ``feature_dim`` wide)."""

    def __init__(self, feature_dim: int = 256, width: int = 32, input_size: int = 32, blur_sigma: float = 0.0) -> None:
        super().__init__()
        if blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0 (0: no blur stem), got {blur_sigma}")
        self.feature_dim = feature_dim
        self.stem = GaussianBlur(blur_sigma) if blur_sigma else nn.Identity()
        self.map_channels = 4 * width  #: channels of the last conv map (see conv_trunk)
        self.input_cfg = {"input_size": (3, input_size, input_size), "mean": GREY_MEAN, "std": GREY_STD}

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.conv = nn.Sequential(
            block(3, width), nn.MaxPool2d(2),
            block(width, 2 * width), nn.MaxPool2d(2),
            block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(2),
        )
        self.fc7 = nn.Sequential(nn.Flatten(), nn.Linear(16 * width, feature_dim), nn.ReLU(inplace=True))

    def forward(self, images):
        return self.fc7(self.conv(self.stem(images)))

    def conv_trunk(self) -> nn.Module:
        """The conv blocks up to the last map, before pooling: ``(n, map_channels, h/4, w/4)``
        (what bilinear pooling consumes)."""
        return nn.Sequential(self.stem, *self.conv[:-1])


@register_backbone
def small_cnn(feature_dim: int = 256, width: int = 32, input_size: int = 32, weights: str | None = None,
              blur_sigma: float = 0.0) -> SmallCNN:
    """Small CNN, ``input_size`` px inputs (default 32), ``feature_dim``-d F7; ``blur_sigma`` > 0:
    a Gaussian blur stem of that sd in px."""
    from .weights import load_local_weights

    return load_local_weights(SmallCNN(feature_dim, width, input_size, blur_sigma), weights)


@register_backbone
def small_cnn_blur(feature_dim: int = 256, width: int = 32, input_size: int = 32, weights: str | None = None,
                   blur_sigma: float = 1.0) -> SmallCNN:
    """:func:`small_cnn` with a Gaussian blur stem (sd 1 px by default): codes that hold under
    pixel noise (``hashindex train --backbone small_cnn_blur``)."""
    return small_cnn(feature_dim, width, input_size, weights, blur_sigma)
