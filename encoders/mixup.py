"""Mixup (Zhang et al., 2018) for supervised hashing: train on blends of two images.

Each image of a batch is blended with another one of the same batch, ``lam x_i + (1 - lam)
x_p(i)``, and its label becomes the same blend of the two one-hot vectors, so the losses
see class probabilities (:class:`encoders.losses.BaseHashLoss` accepts them). On the
seen / unseen protocol it keeps the codes from collapsing onto the seen classes: codes of
classes never trained on land nearer their own kind (``benchmarks/seen_unseen.py``).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def mixup_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mixed images, class probabilities (n, num_classes))`` with one ``lam ~ Beta(alpha,
    alpha)`` for the batch and a random pairing. Draws from torch's global generator (the
    training loop seeds it per epoch, so a resumed run mixes the same way)."""
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    if labels.ndim != 1 or labels.is_floating_point():
        raise ValueError(f"mixup needs class indices of shape (n,), got {tuple(labels.shape)} {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"mixup needs class indices in [0, {num_classes}); unlabelled images (-1) cannot be mixed")
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = torch.randperm(images.shape[0]).to(images.device)
    one_hot = F.one_hot(labels, num_classes).float()
    return lam * images + (1 - lam) * images[partner], lam * one_hot + (1 - lam) * one_hot[partner]
