"""VGG-16 and VGG-19 (Simonyan & Zisserman) as in torchvision, F7 = the 4096-d fc7 activation.

Built without weights; ``weights=PATH`` loads a local torchvision-layout state dict (fc8,
``classifier.6``, ignored). :meth:`VGG.conv_trunk` ends at conv5_3 (VGG-16) / conv5_4
(VGG-19) after ReLU: the map that Bilinear-HashNet pools. ``width`` / ``fc_dim`` shrink
the net for tests; ``batch_norm=True`` gives torchvision's ``vgg16_bn`` layout.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_backbone
from .alexnet import FC8_PREFIX, IMAGENET_MEAN, IMAGENET_STD, scale_width

#: torchvision's configurations "D" and "E" by name.
VGG_CFG_NAMES = {"vgg16": "D", "vgg19": "E"}


class VGG(nn.Module):
    """``forward`` gives F7 ``(n, fc_dim)``: fc7 after ReLU (and dropout while training)."""

    def __init__(self, cfg: list, width: float = 1.0, fc_dim: int = 4096, input_size: int = 224,
                 batch_norm: bool = False, dropout: float = 0.5) -> None:
        # Imported here: torchvision costs a second or more, and only a VGG needs it.
        from torchvision.models.vgg import make_layers

        super().__init__()
        cfg = [v if v == "M" else scale_width(v, width) for v in cfg]
        channels = cfg[-2]
        self.feature_dim = fc_dim
        self.map_channels = channels
        self.input_cfg = {"input_size": (3, input_size, input_size), "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        self.features = make_layers(cfg, batch_norm=batch_norm)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(channels * 49, fc_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),  # fc6
            nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),  # fc7
        )
        for m in self.modules():  # torchvision's initialisation, so an unweighted net trains from scratch
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(images)), 1))

    def conv_trunk(self) -> nn.Module:
        """Every conv layer up to conv5_3 / conv5_4 after ReLU (pool5 dropped)."""
        return self.features[:-1]


def _build(name: str, weights, width, fc_dim, input_size, batch_norm) -> VGG:
    from torchvision.models.vgg import cfgs

    from .weights import load_local_weights

    net = VGG(cfgs[VGG_CFG_NAMES[name]], width, fc_dim, input_size, batch_norm)
    return load_local_weights(net, weights, ignore_prefixes=(FC8_PREFIX,))


@register_backbone
def vgg16(weights: str | None = None, width: float = 1.0, fc_dim: int = 4096, input_size: int = 224,
          batch_norm: bool = False) -> VGG:
    """VGG-16, 4096-d F7 (fc7). No weights unless ``weights=PATH`` (a local state dict)."""
    return _build("vgg16", weights, width, fc_dim, input_size, batch_norm)


@register_backbone
def vgg19(weights: str | None = None, width: float = 1.0, fc_dim: int = 4096, input_size: int = 224,
          batch_norm: bool = False) -> VGG:
    """VGG-19, 4096-d F7 (fc7). No weights unless ``weights=PATH`` (a local state dict)."""
    return _build("vgg19", weights, width, fc_dim, input_size, batch_norm)
