"""The benchmark's configuration, batch timing, distance recall and baseline searches (numpy, usearch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import faiss
import numpy as np

from ..codes import MISSING_DISTANCE, hamming
from ..timing import alternate

SearchFn = Callable[[object, int], np.ndarray]

MIN_BATCH = 10
#: Queries of the code-width section (its unpadded widths are the slowest searches of the run).
WIDTH_QUERIES = 200
_NUMPY_BLOCK_ELEMENTS = 1 << 23
TARGET_RECALL = 0.95


@dataclass
class BenchConfig:
    """What to measure. Sizes and widths are the main cost knobs; ``budget_s`` bounds each figure."""

    sizes: tuple[int, ...] = (1_000_000, 10_000_000)
    bits: int = 64                      # width of the index-kind grid
    widths: tuple[int, ...] = (32, 48, 64, 80, 96, 128)   # flat, padded vs native width
    data: tuple[str, ...] = ("uniform", "clustered")
    ks: tuple[int, ...] = (8, 1000)
    batch: int = 1000
    queries: int = 1000
    budget_s: float = 0.3
    max_single_queries: int = 300
    nprobes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    train_per_list: int = 40
    hnsw_m: int = 16
    hnsw_ef_construction: int = 40
    ef_searches: tuple[int, ...] = (16, 32, 64, 128, 256)
    hnsw_max_size: int = 1_000_000
    #: HNSW graphs over uniform random codes (every distance near bits/2, ties everywhere) took
    #: 6 min (Faiss) and 17 min (usearch) to build at 1M in a trial run: clustered codes only.
    hnsw_data: tuple[str, ...] = ("clustered",)   # data kinds starting with one of these
    #: IVF over an HNSW quantiser with ``ivf_hnsw_lists`` times sqrt(n) lists (0: not measured).
    #: Its k-means costs the square of that factor in build time, so it runs on ``target_data`` only.
    ivf_hnsw_lists: int = 4
    #: The data kind the targets are read on (the hardest one measured); None: ``clustered``.
    target_data: str | None = None
    #: The .npz file of ``benchmarks/encoder_codes.py``, for the ``encoder`` data kinds.
    encoder_codes: str | None = None
    multihash_bits: int = 16
    nflips: tuple[int, ...] = (0, 1, 2)
    auto_recall: float = TARGET_RECALL
    numpy: bool = True
    usearch: bool = True
    rerank: bool = True
    candidates: int = 1000
    feature_dim: int = 128
    shards: bool = True
    shard_size: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        self.sizes = tuple(sorted(int(s) for s in self.sizes))
        for name in ("widths", "data", "ks", "nprobes", "ef_searches", "nflips", "hnsw_data"):
            setattr(self, name, tuple(getattr(self, name)))
        if max(self.ks) > min(self.sizes):
            raise ValueError(f"k={max(self.ks)} exceeds the smallest database size {min(self.sizes)}")


@dataclass
class BatchResult:
    qps: float        # from the median call time
    best_qps: float   # from the fastest call (robust to other processes taking the cores)
    queries: int
    calls: int
    ids: np.ndarray   # results of the first call, for recall


def time_batch(fns: dict[str, SearchFn], queries, k: int, batch: int, budget_s: float,
               seconds_per_query: float) -> dict[str, BatchResult]:
    """Batches of up to ``batch`` queries, cut so one call of every system fits in a third of
    ``budget_s`` (``seconds_per_query``: a fast single-query time, not one inflated by a
    stall); at least three rounds, the first dropped as warm-up."""
    n = int(min(batch, len(queries), max(MIN_BATCH, budget_s / 3 / max(seconds_per_query * len(fns), 1e-9))))
    q = queries[:n]
    first: dict[str, np.ndarray] = {}

    def call(name: str, fn: SearchFn) -> Callable[[int], None]:
        def run(i: int) -> None:
            ids = fn(q, k)
            if i == 0:
                first[name] = ids
        return run

    times = alternate({name: call(name, fn) for name, fn in fns.items()}, min_repeats=3, max_repeats=50,
                      budget_s=budget_s, order="rotate")
    return {name: BatchResult(n / float(np.median(t[1:])), n / min(t[1:]), n, len(t) - 1, first[name])
            for name, t in times.items()}


# ---------------------------------------------------------------------------- recall
def returned_distances(queries: np.ndarray, database: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """True Hamming distances of returned ids (``MISSING_DISTANCE`` for ``-1``), recomputed from
    the codes rather than taken from the index under test."""
    valid = ids >= 0
    gathered = database[np.where(valid, ids, 0)]
    dist = hamming(gathered, queries[:, None, :]).astype(np.int64)
    return np.where(valid, dist, MISSING_DISTANCE)


def distance_recall(queries: np.ndarray, database: np.ndarray, ids: np.ndarray, kth: np.ndarray) -> float:
    """Fraction of the ``nq * k`` result slots holding a distinct neighbour whose Hamming distance
    is at most the exact k-th distance ``kth`` of its query."""
    ids = np.asarray(ids)
    dist = returned_distances(queries, database, ids)
    order = np.argsort(ids, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(ids, order, axis=1)
    repeat = np.zeros_like(sorted_ids, dtype=bool)
    repeat[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    distinct = np.empty_like(repeat)
    np.put_along_axis(distinct, order, ~repeat, axis=1)
    hits = distinct & (ids >= 0) & (dist <= np.asarray(kth)[:, None])
    return float(hits.sum() / ids.size)


# ---------------------------------------------------------------------------- baselines
class NumpyHamming:
    """Exact Hamming kNN in numpy: XOR + ``np.bitwise_count`` over the widest word that divides
    the code, a block of queries at a time, ``argpartition`` for the top k."""

    def __init__(self, database: np.ndarray) -> None:
        database = np.ascontiguousarray(database)
        nbytes = database.shape[1]
        word = next(w for w in (8, 4, 2, 1) if nbytes % w == 0)
        words = database.view(f"<u{word}")
        self._dtype = words.dtype
        self._columns = [np.ascontiguousarray(words[:, j]) for j in range(words.shape[1])]
        self.ntotal = len(database)

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        q = np.ascontiguousarray(queries).view(self._dtype)
        kk = min(k, self.ntotal)
        out = np.full((len(q), k), -1, dtype=np.int64)
        block = max(1, _NUMPY_BLOCK_ELEMENTS // max(1, self.ntotal))
        for start in range(0, len(q), block):
            qb = q[start : start + block]
            dist = np.bitwise_count(self._columns[0][None, :] ^ qb[:, 0:1]).astype(np.uint16)
            for j in range(1, len(self._columns)):
                dist += np.bitwise_count(self._columns[j][None, :] ^ qb[:, j : j + 1])
            part = np.argpartition(dist, kk - 1, axis=1)[:, :kk]
            order = np.argsort(np.take_along_axis(dist, part, axis=1), axis=1, kind="stable")
            out[start : start + len(qb), :kk] = np.take_along_axis(part, order, axis=1)
        return out


def faiss_threads() -> int:
    """Threads Faiss uses (``faiss.omp_set_num_threads``); usearch is given the same number."""
    return int(faiss.omp_get_max_threads())


def usearch_ids(matches, nq: int, k: int) -> np.ndarray:
    out = np.full((nq, k), -1, dtype=np.int64)
    if hasattr(matches, "counts"):
        keys = np.asarray(matches.keys).reshape(nq, -1)[:, :k].astype(np.int64)
        counts = np.asarray(matches.counts).reshape(nq)
        valid = np.arange(keys.shape[1])[None, :] < counts[:, None]
        out[:, : keys.shape[1]] = np.where(valid, keys, -1)
    else:  # a single query's Matches
        keys = np.asarray(matches.keys, dtype=np.int64)[:k]
        out[0, : len(keys)] = keys
    return out


def usearch_exact(database: np.ndarray) -> SearchFn:
    """usearch's exhaustive binary Hamming search (all threads), without building an index."""
    from usearch.index import MetricKind, search

    def fn(q, k):
        return usearch_ids(search(database, q, k, MetricKind.Hamming, exact=True, threads=faiss_threads()), len(q), k)

    return fn


def usearch_hnsw(database: np.ndarray, bits: int, connectivity: int, expansion_add: int):
    """usearch's HNSW over bit vectors (``dtype='b1'``, Hamming), built with all threads."""
    from usearch.index import Index

    index = Index(ndim=bits, metric="hamming", dtype="b1", connectivity=connectivity,
                  expansion_add=expansion_add)
    index.add(np.arange(len(database), dtype=np.uint64), database, threads=faiss_threads())
    return index
