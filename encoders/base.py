"""``HashModel``: the interface every deep hashing method implements.

A model is a backbone (images -> F7 features) followed by a hash head (F7 -> a relaxed
code in [0, 1] or [-1, 1]), mirroring timm's ``forward_features`` / ``forward_head``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from hashindex.codes import pack_bits

if TYPE_CHECKING:
    from .training import Stage


@runtime_checkable
class Backbone(Protocol):
    """What a registered backbone builder returns: an ``nn.Module`` mapping images
    ``(n, 3, h, w)`` to F7 features ``(n, feature_dim)``."""

    feature_dim: int
    #: ``{"input_size": (3, h, w), "mean": (r, g, b), "std": (r, g, b)}``, read by the image transforms.
    input_cfg: dict

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ConvBackbone(Backbone, Protocol):
    """A backbone with a convolutional map before its pooling (what Bilinear-HashNet pools)."""

    map_channels: int

    def conv_trunk(self) -> nn.Module:
        """Images -> the last conv map ``(n, map_channels, h', w')``, before pooling."""
        ...


class HashOutput(NamedTuple):
    """What :meth:`HashModel.forward` returns."""

    features: torch.Tensor  #: F7, ``(n, feature_dim)``: what the fine rerank compares
    codes: torch.Tensor  #: relaxed codes, ``(n, bits)``, before binarisation
    logits: torch.Tensor | None = None  #: class scores, for methods trained by classification


#: A ``pretrained_recipe`` that fine-tunes head and backbone at one low rate: DLBHC's and HashNet's
#: heads at the common 1e-3 pull each class onto one code or a few (README "Real photos").
LOW_LR_EVERYWHERE = {"lr": 1e-4, "backbone_lr_scale": 1.0}


class HashModel(nn.Module):
    """Base class: subclasses set ``method`` and implement :meth:`forward_head`,
    :meth:`binarize` and :meth:`default_loss`."""

    method: str = ""
    #: This method's changes to :data:`encoders.training.PRETRAINED_RECIPE` (the training
    #: defaults on a backbone with pretrained weights), e.g. ``{"lr": 1e-4}``.
    pretrained_recipe: dict = {}

    def __init__(self, net: Backbone, bits: int, num_classes: int | None = None, **config) -> None:
        super().__init__()
        if bits <= 0 or bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
        self.backbone = net
        self.bits = int(bits)
        self.num_classes = num_classes
        #: Keyword arguments that rebuild this model with ``create_encoder(method, **config)``.
        self.config = {"bits": self.bits, "num_classes": num_classes, **config}

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    @property
    def input_cfg(self) -> dict:
        """Input size, channel mean and std the backbone expects."""
        return self.backbone.input_cfg

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(n, 3, h, w)`` -> F7 features ``(n, feature_dim)``."""
        return self.backbone(images)

    def forward_head(self, features: torch.Tensor) -> HashOutput:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> HashOutput:
        """Features, relaxed codes and (if any) logits; see :class:`HashOutput`."""
        return self.forward_head(self.forward_features(images))

    def binarize(self, codes: torch.Tensor) -> torch.Tensor:
        """Relaxed codes -> bool bits."""
        raise NotImplementedError

    def signed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Relaxed codes mapped to ``[-1, 1]`` (bit on = positive), for code-level loss terms;
        the identity for codes that already live there."""
        return codes

    def default_loss(self):
        """The loss this method is trained with (a :class:`encoders.losses.BaseHashLoss`)."""
        raise NotImplementedError

    def code_layer(self) -> nn.Linear | None:
        """The linear layer on F7 whose output's sign is the code (positive: bit on), which
        ``TrainConfig.head_init = "itq"`` starts from ITQ; ``None``: the code is not such a layer."""
        return None

    def on_train_step(self, step: int) -> None:
        """Hook called before every optimisation step (e.g. HashNet's beta continuation)."""

    def module_groups(self) -> dict[str, list[nn.Module]]:
        """Named parts a training stage can select (each parameter in exactly one): by default
        ``backbone`` and ``head`` (every other child module)."""
        head = [m for name, m in self.named_children() if name != "backbone"]
        return {"backbone": [self.backbone], "head": head}

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers of named :meth:`module_groups` parts other than the
        backbone (whose multiplier is ``TrainConfig.backbone_lr_scale``); missing parts: 1."""
        return {}

    def default_stages(self, epochs: int) -> "list[Stage] | None":
        """The method's own training schedule for ``epochs``; None: one stage with the
        :class:`~encoders.training.TrainConfig` settings."""
        return None

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Packed uint8 codes ``(n, bits // 8)`` and float32 F7 features ``(n, feature_dim)``."""
        out = self(images)
        bits = self.binarize(out.codes).cpu().numpy()
        return pack_bits(bits), out.features.float().cpu().numpy()
