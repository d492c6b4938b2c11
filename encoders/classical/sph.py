"""Spherical hashing (Heo, Lee, He, Chang & Yoon, 2012).

Bit ``k`` is 1 when a point lies inside hypersphere ``k`` (pivot ``p_k``, radius ``t_k``).
Radii are the median distance to the pivot, so each bit splits the training set in half;
pivots are moved by pairwise forces until every two spheres share about a quarter of the
points: ``o_ij`` points inside both pushes ``p_i`` by ``(o_ij - n/4) / (n/4) * (p_i - p_j) / 2``
(away from ``p_j`` when the overlap is too large, towards it when too small), averaged over
``j``. Codes are compared by plain Hamming distance here (the paper's spherical Hamming
distance needs a different index).
"""

from __future__ import annotations

import numpy as np
import torch

from ..feature_hashing import FeatureHasher, register_feature_encoder


@register_feature_encoder
class SpH(FeatureHasher):
    """SpH: hyperspheres with pivots and radii balanced iteratively."""

    method = "sph"
    state_names = ("pivots", "radii")

    def __init__(self, bits: int = 64, seed: int = 0, iterations: int = 100, train_size: int = 10_000,
                 mean_tolerance: float = 0.1, std_tolerance: float = 0.15) -> None:
        super().__init__(bits, seed, iterations=int(iterations), train_size=int(train_size),
                         mean_tolerance=float(mean_tolerance), std_tolerance=float(std_tolerance))
        self.iterations, self.train_size = int(iterations), int(train_size)
        self.mean_tolerance, self.std_tolerance = float(mean_tolerance), float(std_tolerance)
        #: Pivot-update rounds the last ``fit`` ran before the overlaps met the tolerances.
        self.rounds_run = 0

    @property
    def input_dim(self) -> int | None:
        return None if self.pivots is None else int(self.pivots.shape[1])

    def _fit(self, x: np.ndarray, rng: np.random.Generator) -> dict:
        if len(x) > self.train_size:
            x = x[np.sort(rng.choice(len(x), self.train_size, replace=False))]
        n = len(x)
        pivots = x[rng.choice(n, self.bits, replace=n < self.bits)].copy()
        quarter = n / 4
        off_diagonal = ~np.eye(self.bits, dtype=bool)
        self.rounds_run = 0
        for _ in range(self.iterations):
            dist = _distances(x, pivots)
            inside = (dist <= np.median(dist, axis=0)).astype(np.float64)
            overlap = inside.T @ inside
            excess = (overlap - quarter) / quarter
            excess[~off_diagonal] = 0
            gaps = np.abs(excess[off_diagonal])
            if gaps.mean() <= self.mean_tolerance and excess[off_diagonal].std() <= self.std_tolerance:
                break
            force = (excess.sum(axis=1, keepdims=True) * pivots - excess @ pivots) / (2 * self.bits)
            pivots += force
            self.rounds_run += 1
        radii = np.median(_distances(x, pivots), axis=0)
        return {"pivots": pivots, "radii": radii}

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return self.radii - torch.cdist(x, self.pivots)


def _distances(x: np.ndarray, pivots: np.ndarray) -> np.ndarray:
    sq = (x * x).sum(axis=1)[:, None] + (pivots * pivots).sum(axis=1)[None, :] - 2 * x @ pivots.T
    return np.sqrt(np.clip(sq, 0, None))
