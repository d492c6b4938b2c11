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


def hashnet_pair_weights(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HashNet's pair weights for a batch: ``(weights, similar, pairs)``, all ``(n, n)``.

    ``pairs`` masks the ordered pairs ``i != j`` (a code paired with itself carries no
    information); ``similar`` is ``s_ij`` (same label). With ``S`` all pairs, ``S1`` the
    similar and ``S0`` the dissimilar ones, ``w_ij = |S| / |S1|`` for similar and
    ``|S| / |S0|`` for dissimilar pairs, so both kinds weigh the same in total.
    """
    n = labels.shape[0]
    pairs = ~torch.eye(n, dtype=torch.bool, device=labels.device)
    similar = (labels[:, None] == labels[None, :]) & pairs
    n_pairs = pairs.sum()
    n_similar = similar.sum()
    n_dissimilar = n_pairs - n_similar
    w_similar = n_pairs / n_similar.clamp(min=1)
    w_dissimilar = n_pairs / n_dissimilar.clamp(min=1)
    weights = torch.where(similar, w_similar, w_dissimilar).float() * pairs
    return weights, similar, pairs


class HashNetLoss(BaseHashLoss):
    """HashNet's weighted pairwise cross-entropy (Cao et al., 2017) on relaxed codes ``h``:

        ``l_ij = log(1 + exp(a <h_i, h_j>)) - a s_ij <h_i, h_j>``,  ``a = 10 / k`` by default,

    weighted by :func:`hashnet_pair_weights` and divided by the number of pairs ``|S|``
    (i.e. the mean loss of the similar pairs plus that of the dissimilar ones). Since
    ``log(1 + e^x) - x = log(1 + e^-x)``, a pair's loss is ``softplus(x)`` when dissimilar
    and ``softplus(-x)`` when similar (``x = a <h_i, h_j>``): no overflow for large inner
    products and no cancellation of two large terms. Term name: ``similarity``.
    """

    def __init__(self, alpha: float | None = None) -> None:
        super().__init__()
        self.alpha = alpha

    def compute_loss(self, output, labels):
        codes = output.codes.float()
        alpha = self.alpha if self.alpha is not None else 10.0 / codes.shape[1]
        weights, similar, pairs = hashnet_pair_weights(labels)
        inner = alpha * (codes @ codes.T)
        pair_loss = F.softplus(torch.where(similar, -inner, inner))
        return {"similarity": (weights * pair_loss).sum() / pairs.sum().clamp(min=1)}


#: Losses a training stage can name (``Stage(loss="hashnet")``); ``None`` means the model's own.
LOSSES = {"classification": ClassificationLoss, "hashnet": HashNetLoss}


def create_loss(name: str) -> BaseHashLoss:
    """A loss by name: one of :data:`LOSSES`."""
    try:
        return LOSSES[name]()
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(sorted(LOSSES))}") from None
