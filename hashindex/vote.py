"""Label voting over retrieved neighbours (HashNet / Bilinear-HashNet top-k voting)."""

from __future__ import annotations

import numpy as np


def majority_vote(neighbor_labels: np.ndarray) -> np.ndarray:
    """Majority label of each row of ``(nq, k)`` neighbour labels, nearest first.

    ``-1`` (a missing neighbour or an unlabelled code) casts no vote. A tie goes
    to the tied label whose best-ranked member comes first. Rows with no vote
    get ``-1``.
    """
    labels = np.asarray(neighbor_labels, dtype=np.int64)
    if labels.ndim != 2:
        raise ValueError(f"neighbor_labels must be 2-D (nq, k), got shape {labels.shape}")
    nq, k = labels.shape
    if k == 0:
        return np.full(nq, -1, dtype=np.int64)
    valid = labels >= 0
    same = (labels[:, :, None] == labels[:, None, :]) & valid[:, None, :]
    counts = same.sum(axis=2)
    # More votes wins; among equal counts the earliest position wins. A label's first
    # occurrence carries the same count as its later ones, so argmax lands on it.
    score = np.where(valid, counts * (k + 1) - np.arange(k), -1)
    best = score.argmax(axis=1)
    winner = labels[np.arange(nq), best]
    return np.where(valid.any(axis=1), winner, -1)
