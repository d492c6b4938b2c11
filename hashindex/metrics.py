"""Retrieval metrics as the deep hashing literature computes them.

Two layers, as in pytorch-metric-learning's accuracy calculator:

- pure functions of neighbour labels (``knn_labels``: ``(nq, k)``, nearest first, ``-1`` for
  a missing neighbour): :func:`average_precision_at_k`, :func:`precision_at_k`,
  :func:`vote_accuracy`. They score any search: flat, IVF, reranked, distributed.
- exact Hamming ranking over a whole database, in query batches so memory stays bounded:
  :func:`hamming_ranking`, :func:`mean_average_precision`, :func:`hamming_radius_counts`,
  :func:`precision_recall_curve`, :func:`precision_within_radius`.

Ranking ties (equal Hamming distance) are broken by database position, i.e. a stable
sort, which is what the published mAP numbers assume.
"""

from __future__ import annotations

from typing import Iterator

import faiss
import numpy as np

from .codes import as_packed_codes

#: Distance-matrix cells computed at once by the batched functions (~64 MB of int32).
_CELL_BUDGET = 1 << 24


def average_precision_at_k(knn_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """AP@k per query: mean of precision@i over the relevant positions i <= k (0 if none).

    Relevant means the neighbour's label equals the query's; ``k`` is the width of
    ``knn_labels``.
    """
    relevant = _relevance(knn_labels, query_labels)
    k = relevant.shape[1]
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, k + 1)
    n_rel = relevant.sum(axis=1)
    total = (precision * relevant).sum(axis=1)
    return np.divide(total, n_rel, out=np.zeros(len(n_rel)), where=n_rel > 0)


def precision_at_k(knn_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """Precision@k per query: the fraction of the ``k`` neighbours sharing the query's label."""
    relevant = _relevance(knn_labels, query_labels)
    return relevant.mean(axis=1)


def vote_accuracy(predicted: np.ndarray, query_labels: np.ndarray) -> float:
    """Top-1 accuracy of voted labels (a ``-1`` prediction counts as wrong)."""
    predicted, query_labels = np.asarray(predicted), np.asarray(query_labels)
    if predicted.shape != query_labels.shape:
        raise ValueError(f"predicted {predicted.shape} and query_labels {query_labels.shape} differ in shape")
    return float(np.mean(predicted == query_labels)) if len(predicted) else 0.0


def _relevance(knn_labels, query_labels) -> np.ndarray:
    knn_labels, query_labels = np.asarray(knn_labels), np.asarray(query_labels)
    if knn_labels.ndim != 2 or query_labels.shape != (len(knn_labels),):
        raise ValueError(
            f"knn_labels must be (nq, k) and query_labels (nq,), got {knn_labels.shape} and {query_labels.shape}"
        )
    return (knn_labels == query_labels[:, None]) & (knn_labels >= 0)


def hamming_distances(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Exact ``(nq, nb)`` int32 Hamming distances between packed codes (Faiss popcount kernels)."""
    queries, database = np.ascontiguousarray(queries), np.ascontiguousarray(database)
    out = np.empty((len(queries), len(database)), dtype=np.int32)
    if out.size:
        faiss.hammings(faiss.swig_ptr(queries), faiss.swig_ptr(database), len(queries), len(database),
                       queries.shape[1], faiss.swig_ptr(out))
    return out


def _query_batches(n_queries: int, n_database: int, batch_size: int | None) -> Iterator[slice]:
    step = batch_size or max(1, _CELL_BUDGET // max(1, n_database))
    for start in range(0, n_queries, step):
        yield slice(start, min(n_queries, start + step))


def hamming_ranking(query_codes, database_codes, k: int | None, bits: int,
                    batch_size: int | None = None) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Yield ``(query slice, distances, positions)`` of the exact top-``k`` per query batch,
    ordered by (Hamming distance, database position); ``k=None`` ranks the whole database."""
    queries = as_packed_codes(query_codes, bits, "query codes")
    database = as_packed_codes(database_codes, bits, "database codes")
    nb = len(database)
    k = nb if k is None else min(int(k), nb)
    for batch in _query_batches(len(queries), nb, batch_size):
        dist = hamming_distances(queries[batch], database)
        # One int64 key orders by distance then position: an exact stable top-k.
        key = dist.astype(np.int64) * nb + np.arange(nb)
        if k < nb:
            part = np.argpartition(key, k - 1, axis=1)[:, :k]
            order = np.take_along_axis(part, np.argsort(np.take_along_axis(key, part, axis=1), axis=1), axis=1)
        else:
            order = np.argsort(key, axis=1)
        yield batch, np.take_along_axis(dist, order, axis=1), order


def mean_average_precision(query_codes, query_labels, database_codes, database_labels, bits: int,
                           k: int | None = 1000, batch_size: int | None = None) -> float:
    """mAP@k over Hamming ranking of the whole database (``k=None``: the whole database)."""
    query_labels, database_labels = np.asarray(query_labels), np.asarray(database_labels)
    ap = np.zeros(len(query_labels))
    for batch, _, positions in hamming_ranking(query_codes, database_codes, k, bits, batch_size):
        ap[batch] = average_precision_at_k(database_labels[positions], query_labels[batch])
    return float(ap.mean()) if len(ap) else 0.0


def hamming_radius_counts(query_codes, query_labels, database_codes, database_labels, bits: int,
                          batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per query, how many database codes (and how many relevant ones) lie at each
    Hamming distance 0..bits: two ``(nq, bits + 1)`` int64 arrays."""
    queries = as_packed_codes(query_codes, bits, "query codes")
    database = as_packed_codes(database_codes, bits, "database codes")
    query_labels, database_labels = np.asarray(query_labels), np.asarray(database_labels)
    nq, nbins = len(queries), bits + 1
    total = np.zeros((nq, nbins), dtype=np.int64)
    relevant = np.zeros((nq, nbins), dtype=np.int64)
    for batch in _query_batches(nq, len(database), batch_size):
        dist = hamming_distances(queries[batch], database)
        rows = np.arange(batch.stop - batch.start)[:, None] * nbins
        flat = (rows + dist).ravel()
        size = len(rows) * nbins
        total[batch] = np.bincount(flat, minlength=size).reshape(-1, nbins)
        # Relevant as in _relevance: same label, and labelled (-1 matches nothing).
        rel = ((database_labels[None, :] == query_labels[batch, None]) & (database_labels[None, :] >= 0)).ravel()
        relevant[batch] = np.bincount(flat, weights=rel, minlength=size).reshape(-1, nbins).astype(np.int64)
    return total, relevant


def precision_recall_curve(query_codes, query_labels, database_codes, database_labels, bits: int,
                           batch_size: int | None = None) -> dict:
    """Precision and recall of Hamming-radius retrieval for every radius 0..bits.

    Per query, precision(r) = relevant within r / retrieved within r (0 when nothing is
    retrieved) and recall(r) = relevant within r / all relevant; both averaged over queries.
    """
    total, relevant = hamming_radius_counts(query_codes, query_labels, database_codes, database_labels,
                                            bits, batch_size)
    retrieved = np.cumsum(total, axis=1)
    hits = np.cumsum(relevant, axis=1)
    n_relevant = hits[:, -1:]
    precision = np.divide(hits, retrieved, out=np.zeros(hits.shape), where=retrieved > 0)
    recall = np.divide(hits, n_relevant, out=np.zeros(hits.shape), where=n_relevant > 0)
    return {"radius": np.arange(bits + 1), "precision": precision.mean(axis=0), "recall": recall.mean(axis=0)}


def precision_within_radius(query_codes, query_labels, database_codes, database_labels, bits: int,
                            radius: int = 2, batch_size: int | None = None) -> float:
    """Mean precision of retrieval within Hamming radius ``radius`` (0 for a query that retrieves nothing)."""
    curve = precision_recall_curve(query_codes, query_labels, database_codes, database_labels, bits, batch_size)
    return float(curve["precision"][min(radius, bits)])
