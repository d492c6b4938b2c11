"""PCA hashing: one bit per principal direction, the sign of the centred projection."""

from __future__ import annotations

import numpy as np

from ..feature_hashing import LinearHasher, pca, register_feature_encoder, require_bits_at_most_dim


@register_feature_encoder
class PCAH(LinearHasher):
    """PCAH: signs of the top ``bits`` principal components."""

    method = "pcah"

    def _fit(self, x: np.ndarray, rng: np.random.Generator) -> dict:
        require_bits_at_most_dim(self.method, self.bits, x.shape[1])
        mean, components, _ = pca(x, self.bits)
        return {"mean": mean, "projection": components, "offset": np.zeros(self.bits)}
