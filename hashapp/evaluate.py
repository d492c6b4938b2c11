"""One call that scores an index on labelled queries with every metric of the papers."""

from __future__ import annotations

import math
import time

import numpy as np

from hashindex import metrics
from hashindex.index import HashIndex
from hashindex.timing import time_single


def evaluate(
    index: HashIndex,
    query_codes: np.ndarray,
    query_labels: np.ndarray,
    database_codes: np.ndarray,
    database_labels: np.ndarray,
    *,
    k: int = 8,
    map_k: int | None = 1000,
    query_features: np.ndarray | None = None,
    candidates: int = 1000,
) -> dict:
    """mAP@``map_k`` (exact Hamming ranking of the database), P@k and top-1 vote accuracy
    from ``index.search``, precision within Hamming radius 2, and the same P@k / vote
    accuracy after a Euclidean rerank when ``query_features`` are given."""
    bits = index.bits
    query_labels = np.asarray(query_labels)
    results: dict = {"queries": int(len(query_labels)), "database": int(len(database_labels)), "bits": bits,
                     "spec": str(index.spec), "k": k}
    map_name = "mAP@all" if map_k is None else f"mAP@{map_k}"
    results[map_name] = metrics.mean_average_precision(query_codes, query_labels, database_codes,
                                                       database_labels, bits, k=map_k)
    index.search(query_codes[:1], k=k)  # warm-up: thread pool start-up is not search time
    start = time.perf_counter()
    _, ids = index.search(query_codes, k=k)
    elapsed = time.perf_counter() - start
    results[f"P@{k}"] = float(metrics.precision_at_k(index.labels_of(ids), query_labels).mean())
    results["vote_accuracy"] = metrics.vote_accuracy(index.vote(query_codes, k=k), query_labels)
    results["P@r2"] = metrics.precision_within_radius(query_codes, query_labels, database_codes,
                                                      database_labels, bits, radius=2)
    results["search_ms_per_query_batched"] = 1000 * elapsed / max(1, len(query_labels))
    if query_features is not None and index.features is not None:
        _, ids = index.search_rerank(query_codes, query_features, k=k, candidates=candidates)
        results[f"rerank_P@{k}"] = float(metrics.precision_at_k(index.labels_of(ids), query_labels).mean())
        results["rerank_vote_accuracy"] = metrics.vote_accuracy(
            index.vote(query_codes, k=k, features=query_features, candidates=candidates), query_labels)
    return results


def evaluate_split(index: HashIndex, query_codes: np.ndarray, query_labels: np.ndarray, database_codes: np.ndarray,
                   database_labels: np.ndarray, unseen_labels, *, query_features: np.ndarray | None = None,
                   **kwargs) -> dict[str, dict]:
    """:func:`evaluate` on the queries of seen and of unseen classes apart: ``{"seen": ...,
    "unseen": ...}``. ``unseen_labels`` are the labels of the classes the encoder never saw;
    ``kwargs`` go to :func:`evaluate`."""
    query_labels = np.asarray(query_labels)
    unseen = np.isin(query_labels, np.asarray(list(unseen_labels)))
    out = {}
    for part, keep in (("seen", ~unseen), ("unseen", unseen)):
        if not keep.any():
            raise ValueError(f"no query of a {part} class: cannot score {part} classes apart")
        out[part] = evaluate(index, query_codes[keep], query_labels[keep], database_codes, database_labels,
                             query_features=None if query_features is None else query_features[keep], **kwargs)
    return out


def single_query_latency(index: HashIndex, query_codes: np.ndarray, k: int = 8, repeats: int = 200) -> dict:
    """Median and p99 wall time (ms) of one-query searches over up to ``repeats`` queries."""
    latency = time_single({"index": lambda q, kk: index.search(q, kk)}, query_codes, k, budget_s=math.inf,
                          max_samples=repeats)["index"]
    return {"median_ms": latency.median_ms, "p99_ms": latency.p99_ms}
