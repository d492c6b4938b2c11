"""Hashing losses. ``BaseHashLoss.forward`` checks inputs; subclasses write ``compute_loss``
and return their terms by name (the training loop logs each and optimises ``loss``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import HashOutput


class BaseHashLoss(nn.Module):
    """Template: ``forward(output, labels) -> {"loss": total, <term>: value, ...}``."""

    requires_labels = True

    def forward(self, output: HashOutput, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.requires_labels:
            if labels is None:
                raise ValueError(f"{type(self).__name__} needs labels")
            if labels.shape != (output.codes.shape[0],):
                raise ValueError(f"labels: expected shape ({output.codes.shape[0]},), got {tuple(labels.shape)}")
            if labels.device != output.codes.device:
                raise ValueError(f"labels on {labels.device} but codes on {output.codes.device}")
        terms = self.compute_loss(output, labels)
        terms["loss"] = sum(terms.values())
        return terms

    def compute_loss(self, output: HashOutput, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class ClassificationLoss(BaseHashLoss):
    """Cross-entropy on the model's logits (DLBHC trains its latent layer this way)."""

    def compute_loss(self, output, labels):
        if output.logits is None:
            raise ValueError("ClassificationLoss needs a model that returns logits (num_classes set)")
        return {"classification": F.cross_entropy(output.logits, labels)}
