"""Checks of search arguments shared by :class:`~hashindex.HashIndex` and the sharded index,
and the turning of range-search hits into a candidate pool."""

from __future__ import annotations

import numpy as np

from .codes import as_packed_codes


def check_queries(codes, k: int, bits: int) -> np.ndarray:
    """Validate ``k`` and query codes (packed or 0/1 / ±1 unpacked) as packed ``bits``-bit codes."""
    if not (type(k) is int or isinstance(k, np.integer)) or k <= 0:  # type(): bools are refused
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return as_packed_codes(codes, bits, name="query codes")


def check_candidates(candidates: int) -> int:
    """Validate a rerank pool size (a positive integer)."""
    if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or candidates <= 0:
        raise ValueError(f"candidates must be a positive integer, got {candidates!r}")
    return int(candidates)


def check_query_features(features, n: int, dim: int | None) -> np.ndarray:
    """Validate ``(n, dim)`` real, finite query features (``dim=None``: any width)."""
    q = np.asarray(features)
    if q.ndim != 2 or q.shape[0] != n or (dim is not None and q.shape[1] != dim):
        raise ValueError(f"query features: expected shape ({n}, {'d' if dim is None else dim}), got {q.shape}")
    check_real(q, "query features")
    if not np.all(np.isfinite(q)):
        raise ValueError("query features contain NaN or infinite values")
    return q


def check_real(values: np.ndarray, name: str) -> None:
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected real numbers, got dtype {values.dtype}")


def range_pool(lims: np.ndarray, D: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Turn range-search output into an ``(nq, max_hits)`` row array padded with -1,
    each row's hits ordered by (Hamming distance, row)."""
    counts = np.diff(lims)
    nq = len(counts)
    pool = np.full((nq, int(counts.max()) if nq else 0), -1, dtype=np.int64)
    for q in range(nq):
        lo, hi = lims[q], lims[q + 1]
        order = np.lexsort((rows[lo:hi], D[lo:hi]))
        pool[q, : hi - lo] = rows[lo:hi][order]
    return pool
