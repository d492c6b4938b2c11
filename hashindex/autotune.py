"""The ``auto`` index spec: choose the index kind, ``nlist`` and ``nprobe`` from the data.

``parse_spec("auto")``, ``"auto,recall=0.9"`` or
``"auto,recall=0.95,k=8,latency_ms=1,memory_mb=512"`` name a request, not an index:
:class:`~hashindex.HashIndex` resolves it at its first :meth:`~hashindex.HashIndex.add`,
from the size of that batch, by measuring on the codes themselves (the way autofaiss
tunes float indexes), and records the choice and the measurements in
``index.metadata["auto"]``.

Request parameters (all optional):

=============  =======  ================================================================
``recall``     0.95     distance recall@k to reach (a neighbour counts when its Hamming
                        distance is at most the true k-th distance); ``1`` means exact
``k``          8        the k that recall is measured at
``latency_ms`` none     if flat answers one query within this, take flat (exact)
``memory_mb``  none     budget for the Faiss index; an IVF that does not fit falls back
                        to flat, and a flat that does not fit is an error
=============  =======  ================================================================

The policy comes from ``benchmarks/results/latency.json`` (2-core machine; see the
README's Benchmarks section): IVF with ``nlist`` about ``sqrt(n)`` beat HNSW and
MultiHash at equal recall on clustered codes, at a fraction of HNSW's build time and
memory, so the candidates are flat and IVF:

1. flat when exact recall is asked for, when the database is too small for IVF to
   pay off (``MIN_IVF_CODES``), when flat meets ``latency_ms`` or when an IVF would not
   fit ``memory_mb``;
2. otherwise IVF: ``nlist`` = the power of two nearest ``sqrt(n)``, trained on
   ``TRAIN_CODES_PER_LIST`` codes per list, and the smallest ``nprobe`` whose recall on
   ``TUNING_QUERIES`` database codes (used as queries, themselves excluded) reaches
   ``recall + RECALL_MARGIN``;
3. flat again if that IVF is not faster than flat in a single-query measurement.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import faiss
import numpy as np

from .spec import IndexSpec
from .timing import time_single

#: Defaults of the request parameters.
DEFAULT_RECALL = 0.95
DEFAULT_K = 8
#: Below this many codes flat answers a query in well under 0.1 ms here: exact is free.
MIN_IVF_CODES = 50_000
#: Codes an IVF's k-means is trained on, per list (here and in ``HashIndex.train``). Faiss
#: warns below 39; more costs k-means time linearly (Faiss's own cap, 256, would take 6x longer).
TRAIN_CODES_PER_LIST = 40
#: Database codes used as tuning queries.
TUNING_QUERIES = 500
#: Tuning aims this much above the requested recall, since it is estimated on a sample.
RECALL_MARGIN = 0.005
#: Single-query latency of each candidate is the median over this many queries.
LATENCY_QUERIES = 30

@dataclass(frozen=True)
class AutoRequest:
    """What an ``auto`` spec asks for, defaults filled in."""

    recall: float = DEFAULT_RECALL
    k: int = DEFAULT_K
    latency_ms: float | None = None
    memory_mb: float | None = None

    @classmethod
    def from_params(cls, params: dict) -> "AutoRequest":
        return cls(**params)


@dataclass
class AutoChoice:
    """The resolved spec, its Faiss index already holding the codes, and what was measured."""

    spec: IndexSpec
    index: faiss.IndexBinary
    report: dict


def choose_nlist(n: int) -> int:
    """The power of two nearest ``sqrt(n)``, kept within 16..65536 and ``n / 39``."""
    nlist = 2 ** round(math.log2(max(1.0, math.sqrt(n))))
    nlist = min(max(nlist, 16), 65536)
    while nlist > 16 and n < 39 * nlist:
        nlist //= 2
    return nlist


def build_auto(codes: np.ndarray, bits: int, params: dict, *, compare_latency: bool = True,
               seed: int = 0) -> AutoChoice:
    """Resolve an ``auto`` request for ``codes`` (packed at Faiss width ``bits``).

    Returns the chosen spec, its Faiss index filled with ``codes`` and a JSON-able report.
    ``compare_latency=False`` skips step 3 (keeps the IVF even if flat measured faster),
    which makes the choice independent of timing noise.
    """
    request = AutoRequest.from_params(params)
    n, code_size = codes.shape
    rng = np.random.default_rng(seed)
    report: dict = {"request": {"recall": request.recall, "k": request.k, "latency_ms": request.latency_ms,
                                "memory_mb": request.memory_mb}, "n": int(n), "bits": int(bits)}
    start = time.perf_counter()
    budget = None if request.memory_mb is None else request.memory_mb * 2**20
    flat_bytes = n * code_size
    if budget is not None and flat_bytes > budget:
        raise ValueError(f"auto: {n} codes of {bits} bits need {flat_bytes / 2**20:.1f} MiB even in a flat "
                         f"index, over memory_mb={request.memory_mb}")
    flat = faiss.IndexBinaryFlat(bits)
    flat.add(codes)
    queries_rows = np.sort(rng.choice(n, size=min(n, TUNING_QUERIES), replace=False))
    latency_rows = queries_rows[: LATENCY_QUERIES]
    flat_ms = _median_single_ms(flat, codes[latency_rows]) if n else 0.0
    report["flat_latency_ms"] = flat_ms

    def choose_flat(reason: str) -> AutoChoice:
        report.update(chosen="flat", reason=reason, recall=1.0, latency_ms=flat_ms,
                      memory_bytes=int(flat_bytes), tuning_s=time.perf_counter() - start)
        return AutoChoice(IndexSpec("flat"), flat, report)

    if request.recall >= 1.0:
        return choose_flat("exact recall requested")
    if n < MIN_IVF_CODES:
        return choose_flat(f"fewer than {MIN_IVF_CODES} codes: flat is already fast and exact")
    if request.latency_ms is not None and flat_ms <= request.latency_ms:
        return choose_flat(f"flat meets latency_ms={request.latency_ms} ({flat_ms:.3f} ms measured)")
    nlist = choose_nlist(n)
    ivf_bytes = n * (code_size + 8) + nlist * code_size  # codes + int64 ids in the lists + centroids
    if budget is not None and ivf_bytes > budget:
        return choose_flat(f"IVF{nlist} needs {ivf_bytes / 2**20:.1f} MiB, over memory_mb={request.memory_mb}")

    ivf = _build_ivf(codes, bits, nlist, rng)
    queries = codes[queries_rows]
    exact_D, _ = flat.search(queries, request.k + 1)
    nprobe, recall = tune_nprobe(ivf, queries, queries_rows, exact_D, request.k, request.recall + RECALL_MARGIN)
    ivf.nprobe = nprobe
    ivf_ms = _median_single_ms(ivf, codes[latency_rows])
    report.update(nlist=nlist, nprobe=nprobe, ivf_recall=recall, ivf_latency_ms=ivf_ms)
    if compare_latency and ivf_ms >= flat_ms:
        return choose_flat(f"tuned IVF{nlist},nprobe={nprobe} ({ivf_ms:.3f} ms) not faster than flat")
    del flat
    report.update(chosen=f"IVF{nlist},nprobe={nprobe}", recall=recall, latency_ms=ivf_ms,
                  reason=f"smallest nprobe reaching recall@{request.k} >= {request.recall + RECALL_MARGIN:g} "
                         f"on {len(queries_rows)} database codes",
                  memory_bytes=int(ivf_bytes), tuning_s=time.perf_counter() - start)
    return AutoChoice(IndexSpec("IVF", (nlist,), {"nprobe": nprobe}), ivf, report)


def _build_ivf(codes: np.ndarray, bits: int, nlist: int, rng: np.random.Generator) -> faiss.IndexBinaryIVF:
    ivf = IndexSpec("IVF", (nlist,)).build(bits)
    n_train = min(len(codes), TRAIN_CODES_PER_LIST * nlist)
    train_rows = np.sort(rng.choice(len(codes), size=n_train, replace=False))
    ivf.train(codes[train_rows])
    ivf.add(codes)
    return ivf


def self_excluded_recall(D: np.ndarray, I: np.ndarray, query_rows: np.ndarray, exact_D: np.ndarray,
                         k: int) -> float:
    """Distance recall@k of a ``k + 1``-NN result for database codes used as queries.

    Each query's own row is dropped from ``(D, I)`` (or the last slot, if it was not
    found); the true k-th distance without the query itself is ``exact_D[:, k]`` (the
    query always sits at distance 0 in the exact ``k + 1`` list). Missing neighbours
    (id ``-1``) count as misses.
    """
    is_self = I == query_rows[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    keep = np.ones_like(is_self)
    keep[np.arange(len(I)), drop] = False
    kept_D = D[keep].reshape(len(I), k)
    kept_I = I[keep].reshape(len(I), k)
    hits = (kept_I >= 0) & (kept_D <= exact_D[:, k : k + 1])
    return float(hits.mean())


def tune_nprobe(ivf: faiss.IndexBinaryIVF, queries: np.ndarray, query_rows: np.ndarray, exact_D: np.ndarray,
                k: int, target: float) -> tuple[int, float]:
    """Smallest ``nprobe`` whose :func:`self_excluded_recall` reaches ``target`` (doubling, then
    bisection: recall never drops as ``nprobe`` grows). Returns ``(nprobe, recall)``."""
    cache: dict[int, float] = {}

    def recall_at(nprobe: int) -> float:
        if nprobe not in cache:
            ivf.nprobe = nprobe
            D, I = ivf.search(queries, k + 1)
            cache[nprobe] = self_excluded_recall(D, I, query_rows, exact_D, k)
        return cache[nprobe]

    nlist = ivf.nlist
    hi = 1
    while hi < nlist and recall_at(hi) < target:
        hi = min(nlist, hi * 2)
    if recall_at(hi) < target:  # nprobe = nlist is exhaustive; only ties at the boundary remain
        return hi, recall_at(hi)
    lo = hi // 2  # recall_at(lo) < target, or lo == 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if recall_at(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi, recall_at(hi)


def _median_single_ms(index: faiss.IndexBinary, queries: np.ndarray) -> float:
    """Median wall time of one-query searches (k = 8), in milliseconds."""
    latency = time_single({"index": index.search}, queries, 8, budget_s=math.inf, max_samples=len(queries))
    return latency["index"].median_ms
