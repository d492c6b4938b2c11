"""Density-sensitive hashing (Jin, Li, Lin, Cai, He & Li, 2014).

k-means (``groups = alpha * bits`` clusters, Faiss) summarises where the data is dense.
For every two r-adjacent groups (one among the other's ``r`` nearest centres) the plane
halfway between their centres, normal to ``mu_i - mu_j``, is a candidate hash function;
the ``bits`` candidates splitting the data most evenly (highest binary entropy) are kept.
"""

from __future__ import annotations

import faiss
import numpy as np

from ..feature_hashing import LinearHasher, register_feature_encoder


@register_feature_encoder
class DSH(LinearHasher):
    """DSH: k-means groups, planes between adjacent group pairs, chosen by entropy."""

    method = "dsh"

    def __init__(self, bits: int = 64, seed: int = 0, alpha: float = 1.5, adjacency: int = 3,
                 kmeans_iterations: int = 20) -> None:
        if alpha <= 0 or adjacency < 1:
            raise ValueError(f"dsh needs alpha > 0 and adjacency >= 1, got alpha={alpha}, adjacency={adjacency}")
        super().__init__(bits, seed, alpha=float(alpha), adjacency=int(adjacency),
                         kmeans_iterations=int(kmeans_iterations))
        self.alpha, self.adjacency, self.kmeans_iterations = float(alpha), int(adjacency), int(kmeans_iterations)

    def _fit(self, x: np.ndarray, rng: np.random.Generator) -> dict:
        centres = self._centres(x)
        pairs = _adjacent_pairs(centres, self.adjacency, self.bits)
        if len(pairs) < self.bits:
            raise ValueError(f"dsh: {len(centres)} k-means groups give only {len(pairs)} planes for {self.bits} "
                             f"bits; use more training points or a larger alpha")
        normals = (centres[pairs[:, 0]] - centres[pairs[:, 1]]).T  # (d, candidates)
        thresholds = ((centres[pairs[:, 0]] + centres[pairs[:, 1]]) / 2 * normals.T).sum(axis=1)
        p = ((x @ normals) >= thresholds).mean(axis=0)
        entropy = -(_xlogx(p) + _xlogx(1 - p))
        chosen = np.argsort(-entropy, kind="stable")[: self.bits]
        mean = x.mean(axis=0)
        projection = normals[:, chosen]
        return {"mean": mean, "projection": projection, "offset": thresholds[chosen] - mean @ projection}

    def _centres(self, x: np.ndarray) -> np.ndarray:
        groups = max(2, min(len(x), int(round(self.alpha * self.bits))))
        kmeans = faiss.Kmeans(x.shape[1], groups, niter=self.kmeans_iterations, seed=self.seed,
                              min_points_per_centroid=1, max_points_per_centroid=1 << 30)
        kmeans.train(np.ascontiguousarray(x, dtype=np.float32))
        return kmeans.centroids.astype(np.float64)


def _adjacent_pairs(centres: np.ndarray, r: int, wanted: int) -> np.ndarray:
    """Unordered pairs (i, j), i < j, where one centre is among the other's ``r`` nearest;
    ``r`` grows until at least ``wanted`` pairs exist (or every pair is taken)."""
    k = len(centres)
    sq = ((centres[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(sq, np.inf)
    order = np.argsort(sq, axis=1, kind="stable")
    for radius in range(min(r, k - 1), k):
        rows = np.repeat(np.arange(k), radius)
        cols = order[:, :radius].ravel()
        pairs = np.unique(np.sort(np.stack([rows, cols], axis=1), axis=1), axis=0)
        if len(pairs) >= wanted:
            return pairs
    return pairs


def _xlogx(p: np.ndarray) -> np.ndarray:
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0)
