"""Spectral hashing (Weiss, Torralba & Fergus, 2008).

Assuming the data is uniform on its PCA bounding box, the Laplacian eigenfunctions are
known in closed form: along principal direction ``d`` of width ``R_d`` the ``k``-th one is
``cos(k * pi * (u_d - lower_d) / R_d)`` with eigenvalue growing as ``(k / R_d)^2``. The
``bits`` one-dimensional eigenfunctions of smallest eigenvalue (the constant one excluded)
each give a bit: its sign.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..feature_hashing import FeatureHasher, pca, register_feature_encoder

#: Widening of the bounding box so no training point sits exactly on its edge.
_BOX_MARGIN = 1e-6


@register_feature_encoder
class SH(FeatureHasher):
    """SH: PCA + analytic eigenfunctions of the bounding box, sign."""

    method = "sh"
    state_names = ("mean", "components", "lower", "mode_dim", "omega")

    @property
    def input_dim(self) -> int | None:
        return None if self.mean is None else int(self.mean.shape[0])

    def _fit(self, x: np.ndarray, rng: np.random.Generator) -> dict:
        n_pca = min(self.bits, x.shape[1])
        mean, components, _ = pca(x, n_pca)
        u = (x - mean) @ components
        lower = u.min(axis=0) - _BOX_MARGIN
        width = u.max(axis=0) + _BOX_MARGIN - lower
        # Frequencies 1..m_d along direction d, m_d proportional to its width, as many as could be picked.
        max_freq = np.ceil((self.bits + 1) * width / width.max()).astype(int)
        dims = np.concatenate([np.full(m, d) for d, m in enumerate(max_freq)])
        freqs = np.concatenate([np.arange(1, m + 1) for m in max_freq]).astype(np.float64)
        eigenvalue = (freqs / width[dims]) ** 2
        chosen = np.argsort(eigenvalue, kind="stable")[: self.bits]
        return {
            "mean": mean,
            "components": components,
            "lower": lower,
            "mode_dim": dims[chosen],
            "omega": math.pi * freqs[chosen] / width[dims[chosen]],
        }

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        u = (x - self.mean) @ self.components - self.lower
        return torch.cos(u[:, self.mode_dim] * self.omega)
