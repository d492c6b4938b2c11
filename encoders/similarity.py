"""The neighbourhood similarity matrix of unsupervised deep hashing (BGAN, Song et al. 2018).

``M[i, j] = +1`` when ``j`` is among the ``k1`` cosine nearest neighbours of ``i``, or among
the ``k1`` nearest neighbours of one of ``i``'s ``k2`` nearest neighbours; ``-1`` otherwise.
``M[i, i] = +1``. ``M`` is not symmetric in general.

Only the +1 entries are stored, as a boolean ``scipy.sparse.csr_matrix`` (at most
``1 + k1 + k1 * k2`` per row), never a dense ``n x n`` array; a training batch asks for
its dense ``B x B`` block with :func:`similarity_block`. Neighbours come from an exact
Faiss inner-product search on L2-normalised features.
"""

from __future__ import annotations

import faiss
import numpy as np
import scipy.sparse as sp
import torch

#: Rows expanded at once while building the matrix (bounds the temporary memory).
_ROW_BLOCK = 1 << 15


def cosine_knn(features: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` nearest neighbours of every row by cosine similarity, most similar first,
    the row itself excluded: an ``(n, k)`` int64 array (Faiss ``IndexFlatIP``)."""
    x = np.array(features, dtype=np.float32, order="C", copy=True)
    n = len(x)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n - 1] = [1, {n - 1}], got {k}")
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, found = index.search(x, k + 1)
    # Drop each row's own id wherever ties put it (or the last hit if it is absent).
    own = found == np.arange(n)[:, None]
    own[~own.any(axis=1), -1] = True
    return found[~own].reshape(n, k).astype(np.int64)


def knn_similarity(features, k1: int = 20, k2: int = 30) -> sp.csr_matrix:
    """The sparse +1 pattern of ``M`` (see the module docstring) for ``features`` ``(n, d)``.

    ``k1`` and ``k2`` are clipped to ``n - 1`` on tiny inputs."""
    if k1 < 1 or k2 < 0:
        raise ValueError(f"need k1 >= 1 and k2 >= 0, got k1={k1}, k2={k2}")
    x = np.asarray(features)
    n = len(x)
    if n < 2:
        raise ValueError(f"need at least 2 feature vectors, got {n}")
    k1, k2 = min(k1, n - 1), min(k2, n - 1)
    knn = cosine_knn(x, max(k1, k2))
    first, second = knn[:, :k1], knn[:, :k2]
    indices, counts = [], []
    for start in range(0, n, _ROW_BLOCK):
        rows = np.arange(start, min(n, start + _ROW_BLOCK))
        cols = np.concatenate([rows[:, None], first[rows], first[second[rows]].reshape(len(rows), k1 * k2)], axis=1)
        cols.sort(axis=1)
        keep = np.ones(cols.shape, dtype=bool)
        keep[:, 1:] = cols[:, 1:] != cols[:, :-1]
        indices.append(cols[keep])
        counts.append(keep.sum(axis=1))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))])
    indices = np.concatenate(indices)
    return sp.csr_matrix((np.ones(len(indices), dtype=bool), indices, indptr), shape=(n, n))


def similarity_block(similar: sp.csr_matrix, ids) -> torch.Tensor:
    """The dense ``(B, B)`` float block ``M[ids][:, ids]`` in {-1, +1}."""
    ids = np.asarray(ids)
    block = similar[ids][:, ids].toarray()
    return torch.from_numpy(np.where(block, 1.0, -1.0).astype(np.float32))
