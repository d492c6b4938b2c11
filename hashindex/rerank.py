"""Fine step of coarse-then-fine search (DLBHC): Euclidean rerank of a Hamming candidate pool."""

from __future__ import annotations

import numpy as np

#: Elements (queries x candidates x feature dim) gathered at once; bounds rerank memory.
_GATHER_BUDGET = 1 << 25


def rerank_euclidean(
    query_features: np.ndarray,
    database_features: np.ndarray,
    candidates: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank each query's candidate rows by Euclidean distance and keep the ``k`` best.

    ``candidates`` is an ``(nq, c)`` array of row numbers into ``database_features``,
    ``-1`` marking empty slots. Returns float32 distances and the chosen rows, both
    ``(nq, k)``, padded with ``inf`` / ``-1`` when a pool holds fewer than ``k``.
    Equal distances keep their order in the pool (the coarse Hamming order).
    """
    nq, c = candidates.shape
    d = database_features.shape[1]
    D = np.full((nq, k), np.inf, dtype=np.float32)
    rows = np.full((nq, k), -1, dtype=np.int64)
    if c == 0 or nq == 0:
        return D, rows
    step = max(1, _GATHER_BUDGET // max(1, c * d))
    keep = min(k, c)
    for start in range(0, nq, step):
        stop = min(nq, start + step)
        pool = candidates[start:stop]
        valid = pool >= 0
        gathered = database_features[np.where(valid, pool, 0)]
        query = query_features[start:stop, None, :]
        with np.errstate(over="ignore"):
            diff = gathered.astype(np.float32, copy=False) - query.astype(np.float32, copy=False)
            dist = np.sqrt(np.einsum("qcd,qcd->qc", diff, diff))
        if not np.isfinite(dist[valid]).all():
            dist = _scaled_distances(gathered, query)  # huge finite features: the squares overflowed
        dist[~valid] = np.inf
        order = np.argsort(dist, axis=1, kind="stable")[:, :keep]
        with np.errstate(over="ignore"):  # a distance beyond float32 becomes inf, still a hit
            D[start:stop, :keep] = np.take_along_axis(dist, order, axis=1)
        chosen = np.take_along_axis(pool, order, axis=1)
        rows[start:stop, :keep] = np.where(np.take_along_axis(valid, order, axis=1), chosen, -1)
    return D, rows


def _scaled_distances(gathered: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Euclidean distances in float64 as ``m * ||diff / m||`` with ``m = max |diff|``, which
    neither overflows nor underflows for any finite features."""
    with np.errstate(over="ignore"):
        diff = gathered.astype(np.float64) - query.astype(np.float64)
        if not np.isfinite(diff).all():  # float64 extremes of opposite sign: halve both first
            diff = gathered.astype(np.float64) / 2 - query.astype(np.float64) / 2
            return 2 * _norm_scaled(diff)
    return _norm_scaled(diff)


def _norm_scaled(diff: np.ndarray) -> np.ndarray:
    m = np.abs(diff).max(axis=2, keepdims=True)
    unit = np.divide(diff, m, out=np.zeros_like(diff), where=m > 0)
    return m[..., 0] * np.sqrt(np.einsum("qcd,qcd->qc", unit, unit))
