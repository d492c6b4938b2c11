"""LSH for angular similarity (Charikar, 2002): signs of random Gaussian projections.

Features are centred on the training mean first, so that on non-negative inputs (pixels,
ReLU features) no bit is constant.
"""

from __future__ import annotations

import numpy as np

from ..feature_hashing import LinearHasher, register_feature_encoder


@register_feature_encoder
class LSH(LinearHasher):
    """LSH: random Gaussian projections of centred features, sign."""

    method = "lsh"

    def _fit(self, x: np.ndarray, rng: np.random.Generator) -> dict:
        return {"mean": x.mean(axis=0), "projection": rng.standard_normal((x.shape[1], self.bits)),
                "offset": np.zeros(self.bits)}
