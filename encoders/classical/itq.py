"""Iterative quantisation (Gong & Lazebnik, 2011).

PCA to ``bits`` dimensions, then alternate: codes ``B = sign(V R)`` for the current rotation,
and the rotation minimising ``||B - V R||_F`` for those codes (orthogonal Procrustes: with
``V^T B = U S W^T``, ``R = U W^T``). The rotation is folded into one projection matrix.
"""

from __future__ import annotations

import numpy as np
import torch

from ..feature_hashing import LinearHasher, pca, register_feature_encoder, require_bits_at_most_dim


@register_feature_encoder
class ITQ(LinearHasher):
    """ITQ: PCA, then ``iterations`` rounds of orthogonal Procrustes rotation."""

    method = "itq"

    def __init__(self, bits: int = 64, seed: int = 0, iterations: int = 50) -> None:
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        super().__init__(bits, seed, iterations=int(iterations))
        self.iterations = int(iterations)

    def _fit(self, x: np.ndarray, rng: np.random.Generator) -> dict:
        require_bits_at_most_dim(self.method, self.bits, x.shape[1])
        mean, components, _ = pca(x, self.bits)
        v = (x - mean) @ components
        rotation, _ = np.linalg.qr(rng.standard_normal((self.bits, self.bits)))
        for _ in range(self.iterations):
            b = np.where(v @ rotation >= 0, 1.0, -1.0)
            u, _, wt = np.linalg.svd(v.T @ b)
            rotation = u @ wt
        return {"mean": mean, "projection": components @ rotation, "offset": np.zeros(self.bits)}

    def quantization_error(self, features) -> float:
        """Mean ``||sign(v) - v||^2`` per point of the rotated PCA projections ``v``."""
        v = self.project(features).double()
        return float(((torch.where(v >= 0, 1.0, -1.0) - v) ** 2).sum(dim=1).mean())
