"""Hashing losses. ``BaseHashLoss.forward`` checks inputs; subclasses write ``compute_loss``
and return their terms by name (the training loop logs each and optimises ``loss``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import HashOutput


class BaseHashLoss(nn.Module):
    """Template: ``forward(output, labels) -> {"loss": total, <term>: value, ...}``.

    ``labels`` are class indices ``(n,)`` or, for mixed images (:mod:`encoders.mixup`),
    class probabilities ``(n, classes)``; supervised losses accept both."""

    requires_labels = True
    #: Whether the loss compares several views of each image (``TrainConfig.views`` >= 2): then
    #: ``forward`` gets each row's ``instances`` (the id of the image it is a view of) and passes
    #: them on to ``compute_loss``.
    needs_views = False

    def forward(self, output: HashOutput, labels: torch.Tensor | None = None,
                instances: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.requires_labels:
            if labels is None:
                raise ValueError(f"{type(self).__name__} needs labels")
            n = output.codes.shape[0]
            hard = labels.shape == (n,)
            soft = labels.ndim == 2 and labels.shape[0] == n and labels.is_floating_point()
            if not (hard or soft):
                raise ValueError(f"labels: expected class indices of shape ({n},) or float class probabilities "
                                 f"of shape ({n}, classes), got {tuple(labels.shape)} {labels.dtype}")
            if labels.device != output.codes.device:
                raise ValueError(f"labels on {labels.device} but codes on {output.codes.device}")
        if self.needs_views:
            n = output.codes.shape[0]
            if instances is None or instances.shape != (n,):
                raise ValueError(f"{type(self).__name__} compares views of each image: it needs instance ids of "
                                 f"shape ({n},) (train with views >= 2)")
            terms = self.compute_loss(output, labels, instances)
        else:
            terms = self.compute_loss(output, labels)
        terms["loss"] = sum(terms.values())
        return terms

    def compute_loss(self, output: HashOutput, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class ClassificationLoss(BaseHashLoss):
    """Cross-entropy on the model's logits (DLBHC trains its latent layer this way); soft
    labels give the cross-entropy against those class probabilities."""

    def compute_loss(self, output, labels):
        if output.logits is None:
            raise ValueError("ClassificationLoss needs a model that returns logits (num_classes set)")
        return {"classification": F.cross_entropy(output.logits, labels)}


def label_similarity(labels: torch.Tensor) -> torch.Tensor:
    """``s_ij`` as floats ``(n, n)``: 1 where two class indices are equal, else 0; for class
    probabilities ``T`` ``(n, classes)``, the chance that i and j share a class, ``T T^T``."""
    if labels.ndim == 2:
        labels = labels.float()
        return labels @ labels.T
    return (labels[:, None] == labels[None, :]).float()


def hashnet_pair_weights(similarity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HashNet's pair weights for a batch: ``(w_similar, w_dissimilar, pairs)``.

    ``similarity`` is ``s_ij`` (:func:`label_similarity`); ``pairs`` masks the ordered pairs
    ``i != j`` (a code paired with itself carries no information). With ``S`` all pairs,
    ``|S1| = sum s_ij`` and ``|S0| = sum (1 - s_ij)`` over them (for hard labels: the counts
    of similar and dissimilar pairs), ``w_similar = |S| / |S1|`` and ``w_dissimilar =
    |S| / |S0|``, so both kinds weigh the same in total.
    """
    n = similarity.shape[0]
    pairs = ~torch.eye(n, dtype=torch.bool, device=similarity.device)
    n_pairs = pairs.sum()
    n_similar = (similarity * pairs).sum()
    n_dissimilar = n_pairs - n_similar
    # clamp: with no similar (or no dissimilar) pair, that kind's terms are all zero anyway.
    w_similar = n_pairs / n_similar.clamp(min=1)
    w_dissimilar = n_pairs / n_dissimilar.clamp(min=1)
    return w_similar, w_dissimilar, pairs


class HashNetLoss(BaseHashLoss):
    """HashNet's weighted pairwise cross-entropy (Cao et al., 2017) on relaxed codes ``h``:

        ``l_ij = log(1 + exp(a <h_i, h_j>)) - a s_ij <h_i, h_j>``,  ``a = 10 / k`` by default,

    with the similar part weighted by ``w_similar`` and the dissimilar part by ``w_dissimilar``
    (:func:`hashnet_pair_weights`), divided by the number of pairs ``|S|`` (i.e. the mean
    loss of the similar pairs plus that of the dissimilar ones). Since ``log(1 + e^x) - s x
    = s log(1 + e^-x) + (1 - s) log(1 + e^x)``, a pair's loss is ``s softplus(-x) + (1 - s)
    softplus(x)`` (``x = a <h_i, h_j>``): no overflow for large inner products and no
    cancellation of two large terms. Soft ``s_ij`` (mixed images) use the same form.
    Term name: ``similarity``.
    """

    def __init__(self, alpha: float | None = None) -> None:
        super().__init__()
        self.alpha = alpha

    def compute_loss(self, output, labels):
        codes = output.codes.float()
        alpha = self.alpha if self.alpha is not None else 10.0 / codes.shape[1]
        similarity = label_similarity(labels)
        w_similar, w_dissimilar, pairs = hashnet_pair_weights(similarity)
        inner = alpha * (codes @ codes.T)
        pair_loss = w_similar * similarity * F.softplus(-inner) + w_dissimilar * (1 - similarity) * F.softplus(inner)
        return {"similarity": (pair_loss * pairs).sum() / pairs.sum().clamp(min=1)}


#: The weights :func:`code_terms` takes, each a ``TrainConfig`` field of the same name.
CODE_TERMS = ("quantization", "bit_balance", "decorrelation")


def code_terms(signed_codes: torch.Tensor, quantization: float = 0.0, bit_balance: float = 0.0,
               decorrelation: float = 0.0) -> dict[str, torch.Tensor]:
    """Regularisers on relaxed codes mapped to ``[-1, 1]`` (``HashModel.signed_codes``), ``(n, bits)``:

    - ``quantization``: ``mean((|b| - 1)^2)``, pulls each relaxed bit to -1 or +1, so that
      binarising changes little;
    - ``bit_balance``: ``mean_k (mean_i b_ik)^2``, pushes every bit to be on for half of the
      batch; a bit that is the same for every image separates nothing, and codes collapse
      when many are;
    - ``decorrelation``: the mean squared off-diagonal entry of the bits' correlation matrix over
      the batch (:func:`bit_correlation`); bit balance evens out each bit alone, this keeps bits
      from repeating one another (ITQ's bits are decorrelated by construction).

    Each term is returned (weighted) only when its weight is > 0.
    """
    b = signed_codes.float()
    terms = {}
    if quantization:
        terms["quantization"] = quantization * (b.abs() - 1).pow(2).mean()
    if bit_balance:
        terms["bit_balance"] = bit_balance * b.mean(dim=0).pow(2).mean()
    if decorrelation:
        corr = bit_correlation(b)
        off_diagonal = ~torch.eye(corr.shape[0], dtype=torch.bool, device=corr.device)
        terms["decorrelation"] = decorrelation * corr[off_diagonal].pow(2).mean()
    return terms


def bit_correlation(b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation ``(bits, bits)`` of the columns of ``b`` ``(n, bits)``, each centred
    over the batch; a constant bit (no variance) gets correlation 0 with every other bit."""
    centred = b - b.mean(dim=0)
    # clamp: a constant bit would divide 0 by 0 (and its sqrt would have an infinite gradient).
    sd = centred.pow(2).mean(dim=0).clamp(min=1e-12).sqrt()
    return (centred.T @ centred) / len(b) / (sd[:, None] * sd[None, :])


def add_code_terms(terms: dict[str, torch.Tensor], signed_codes: torch.Tensor, **weights: float
                   ) -> dict[str, torch.Tensor]:
    """``terms`` (a loss's output) with the :func:`code_terms` of ``weights`` (names from
    :data:`CODE_TERMS`) added, ``loss`` their new total."""
    extra = code_terms(signed_codes, **weights)
    return {**terms, **extra, "loss": terms["loss"] + sum(extra.values())}


#: Losses a training stage can name (``Stage(loss="hashnet")``); ``None`` means the model's own.
LOSSES = {"classification": ClassificationLoss, "hashnet": HashNetLoss}


def create_loss(name: str) -> BaseHashLoss:
    """A loss by name: one of :data:`LOSSES`."""
    try:
        return LOSSES[name]()
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(sorted(LOSSES))}") from None
