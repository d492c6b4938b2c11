"""DLBHC (Lin et al., 2015): a latent sigmoid layer H between F7 and F8, trained by
classification; the binary code is ``H > 0.5`` and F7 serves the fine rerank."""

from __future__ import annotations

import torch
from torch import nn

from .base import LOW_LR_EVERYWHERE, HashModel, HashOutput
from .losses import ClassificationLoss
from .registry import create_backbone, register_encoder


class DLBHC(HashModel):
    method = "dlbhc"
    # On a pretrained backbone, a head trained at the common 1e-3 maps each seen class to one code
    # or a few and puts unseen classes on them; 1e-4 everywhere kept them apart on the tuning
    # partitions of benchmarks/photos.py (320 views), not at 640 views (README "Real photos").
    # Started from ITQ, the latent layer raised unseen mAP@100 there (0.933 -> 0.966) with 92 %
    # distinct database codes; HashNet's pairwise loss kept ITQ's collisions (72 %), so it starts at random.
    pretrained_recipe = {**LOW_LR_EVERYWHERE, "head_init": "itq"}

    def __init__(self, net: nn.Module, bits: int, num_classes: int, **config) -> None:
        if not num_classes or num_classes < 2:
            raise ValueError(f"DLBHC is trained by classification and needs num_classes >= 2, got {num_classes}")
        super().__init__(net, bits, num_classes, **config)
        self.latent = nn.Linear(net.feature_dim, bits)
        self.classifier = nn.Linear(bits, num_classes)

    def forward_head(self, features: torch.Tensor) -> HashOutput:
        h = torch.sigmoid(self.latent(features))
        return HashOutput(features=features, codes=h, logits=self.classifier(h))

    def binarize(self, codes: torch.Tensor) -> torch.Tensor:
        return codes > 0.5

    def signed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return 2 * codes - 1

    def default_loss(self) -> ClassificationLoss:
        return ClassificationLoss()

    def code_layer(self) -> nn.Linear:
        return self.latent  # sigmoid(z) > 0.5 exactly when z > 0


@register_encoder
def dlbhc(backbone: str = "small_cnn", bits: int = 64, num_classes: int = 10, **backbone_kwargs) -> DLBHC:
    """DLBHC on any registered backbone; extra keywords go to the backbone builder."""
    net = create_backbone(backbone, **backbone_kwargs)
    return DLBHC(net, bits, num_classes, backbone=backbone, **backbone_kwargs)
