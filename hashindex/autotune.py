"""The ``auto`` index spec: choose the index kind and its parameters from the data.

``parse_spec("auto")``, ``"auto,recall=0.9"`` or
``"auto,recall=0.95,k=8,latency_ms=1,memory_mb=512,noise=0.05"`` name a request, not an
index: :class:`~hashindex.HashIndex` resolves it at its first
:meth:`~hashindex.HashIndex.add`, from that batch, by measuring on the codes themselves,
and records the choice, every candidate tried and how recall was measured in
``index.metadata["auto"]``.

Request parameters (all optional):

=============  =======  ================================================================
``recall``     0.95     distance recall@k to reach (a neighbour counts when its Hamming
                        distance is at most the true k-th distance); ``1`` means exact
``k``          8        the k that recall is measured at
``latency_ms`` none     single-query latency budget: flat when flat meets it; otherwise a
                        candidate must meet it too
``memory_mb``  none     budget for the Faiss index; candidates that do not fit are skipped,
                        and a flat that does not fit is an error
``noise``      0.07     how far calibration queries lie from the database (below)
=============  =======  ================================================================

Recall is calibrated on queries that are not in the index: ``TUNING_QUERIES`` database
codes, each with every bit flipped with probability ``noise`` (a near-duplicate of a stored
image, not the image itself), searched for ``k + 1`` neighbours with the database code they
came from dropped from both the exact and the approximate answer (``noise=0`` is plain
leave-one-out). Queries farther from the database than ``noise`` get lower recall than
recorded; the benchmark reports recall under several query conditions.

Policy:

1. flat when exact recall is asked for, when the database is too small for an
   approximate index to pay off (``MIN_IVF_CODES``), or when flat meets ``latency_ms``;
2. otherwise every candidate of :func:`candidate_specs` that fits ``memory_mb`` is built
   and its search parameter tuned to the smallest value whose calibrated recall reaches
   ``recall + RECALL_MARGIN``; the fastest one (median single-query latency) that also
   meets ``latency_ms`` and is faster than flat wins;
3. when none does, flat (exact), with the reason and a warning: the request could not be met.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import faiss
import numpy as np

from .spec import KINDS, SEARCH_PARAMS, IndexSpec, apply_search_params
from .timing import time_single

#: Defaults of the request parameters.
DEFAULT_RECALL = 0.95
DEFAULT_K = 8
#: The smallest of 0.03 / 0.05 / 0.07 / 0.1 that kept recall >= R - 0.01 in every tuning case (R = 0.95;
#: none of them the benchmark's reported queries): at 0.05 the sampled IVF8192 over 1M encoder codes got
#: 0.935-0.938 on the 1,792 held-out images of the tuning split, at 0.07 0.951-0.961 (0.1: 0.973-0.978).
#: At 10M clustered codes (tuning draws of perturbed and held-out queries, choice simulated) 0.07 chose
#: nprobe 12 at quantizer depth 32, recall 0.971 / 0.990; 0.1 chose nprobe 32 at depth 48, 0.985 / 0.997.
#: Leave-one-out (0) matched held-out synthetic codes (0.964 calibrated, 0.960 measured), not perturbed
#: copies (0.907).
DEFAULT_NOISE = 0.07
#: Below this many codes flat answers a query in well under 0.1 ms here: exact is free.
MIN_IVF_CODES = 50_000
#: Codes an IVF's k-means is trained on, per list (here and in ``HashIndex.train``). Faiss
#: warns below 39; more costs k-means time linearly (Faiss's own cap, 256, would take 6x longer).
TRAIN_CODES_PER_LIST = 40
#: Calibration queries (perturbed database codes).
TUNING_QUERIES = 500
#: Tuning aims this much above the requested recall, since it is estimated on a sample.
RECALL_MARGIN = 0.005
#: Single-query latency of each candidate (and each of its settings) is the median over this many queries.
LATENCY_QUERIES = 100
#: Largest ``nflip`` tried on a hash-table kind, and ``efSearch`` on an HNSW graph.
MAX_NFLIP = 3
MAX_EF_SEARCH = 1024
#: ``quantizer_efSearch`` values tried for an IVF over an HNSW quantiser (nprobe tuned at each;
#: steps of about 1.5x, since each step changes the latency by 10-30 %).
QUANTIZER_EF_SEARCH = (16, 24, 32, 48, 64, 96, 128)
#: Sub-code width of the MultiHash candidate's tables.
MULTIHASH_TABLE_BITS = 16
#: Codes per list of the sampled IVF candidate: several lists per mode of clustered data
#: (10M codes from 10,000 modes: 65,536 lists, 6.5 per mode), a few hundred codes scanned per probe.
SAMPLED_CODES_PER_LIST = 150
#: M of the HNSW graphs (the sampled IVF's quantiser and the HNSW candidate).
HNSW_M = 32
#: The HNSW candidate is built up to this many codes only: at 1M clustered codes its build took
#: 22 s on an idle 2-core machine (330 s under load) against IVF's 1.3 s, and IVF was faster at
#: every recall there (README, Benchmarks).
HNSW_MAX_CODES = 250_000
#: Above this many codes only the sampled IVF is built, to keep auto's build within minutes on
#: 2 cores: at 10M clustered codes k-means IVF4096 took 226 s to build (its fill alone is
#: n * sqrt(n) Hamming distances) and MultiHash4x16 was slower than the sampled IVF at every recall.
SAMPLED_ONLY_ABOVE = 2_000_000


@dataclass(frozen=True)
class AutoRequest:
    """What an ``auto`` spec asks for, defaults filled in."""

    recall: float = DEFAULT_RECALL
    k: int = DEFAULT_K
    latency_ms: float | None = None
    memory_mb: float | None = None
    noise: float = DEFAULT_NOISE

    @classmethod
    def from_params(cls, params: dict) -> "AutoRequest":
        return cls(**params)


@dataclass
class AutoChoice:
    """The resolved spec, its Faiss index already holding the codes, and what was measured."""

    spec: IndexSpec
    index: faiss.IndexBinary
    report: dict


def choose_nlist(n: int, per_sqrt: int = 1) -> int:
    """The power of two nearest ``per_sqrt * sqrt(n)``, kept within 16..65536 and ``n / 39``."""
    nlist = 2 ** round(math.log2(max(1.0, per_sqrt * math.sqrt(n))))
    nlist = min(max(nlist, 16), 65536)
    while nlist > 16 and n < 39 * nlist:
        nlist //= 2
    return nlist


def candidate_specs(n: int, bits: int) -> list[IndexSpec]:
    """The indexes ``auto`` builds and tunes for ``n`` codes of ``bits`` bits: IVF over a flat
    quantiser with about ``sqrt(n)`` lists (k-means); IVF with one list per
    ``SAMPLED_CODES_PER_LIST`` codes, sampled centroids and an HNSW quantiser (many lists per
    mode, no k-means); multi-index hashing with 16-bit tables; and an HNSW graph up to
    ``HNSW_MAX_CODES``. Above ``SAMPLED_ONLY_ABOVE`` codes the sampled IVF alone. IVF over an
    HNSW quantiser trained by k-means is left out: with many lists its k-means takes minutes and
    partitions no better than sampling."""
    sampled_nlist = min(2 ** round(math.log2(max(16, n / SAMPLED_CODES_PER_LIST))), 65536)
    sampled = IndexSpec("IVF_HNSW_sampled", (sampled_nlist, HNSW_M))
    if n > SAMPLED_ONLY_ABOVE:
        return [sampled]
    specs = [IndexSpec("IVF", (choose_nlist(n),)), sampled,
             IndexSpec("MultiHash", (bits // MULTIHASH_TABLE_BITS, MULTIHASH_TABLE_BITS))]
    if n <= HNSW_MAX_CODES:
        specs.append(IndexSpec("HNSW", (HNSW_M,)))
    return specs


def estimated_bytes(spec: IndexSpec, n: int, code_size: int) -> int:
    """Memory of ``spec`` holding ``n`` codes, before building it: the codes, plus int64 ids
    in IVF lists and hash tables, centroids, and 4-byte graph links (2M per node)."""
    codes = n * code_size
    if KINDS[spec.kind].trains:
        nlist = spec.args[0]
        links = nlist * 2 * spec.args[1] * 4 if len(spec.args) > 1 else 0
        return codes + n * 8 + nlist * code_size + links
    if spec.kind in ("MultiHash", "Hash"):
        tables = spec.args[0] if spec.kind == "MultiHash" else 1
        return codes + n * tables * 8
    if spec.kind == "HNSW":
        return codes + n * 2 * spec.args[0] * 4
    return codes


def build_auto(codes: np.ndarray, bits: int, params: dict, *, compare_latency: bool = True,
               seed: int = 0, candidates: list[IndexSpec] | None = None) -> AutoChoice:
    """Resolve an ``auto`` request for ``codes`` (packed at Faiss width ``bits``).

    Returns the chosen spec, its Faiss index filled with ``codes`` and a JSON-able report.
    ``compare_latency=False`` keeps the most accurate-per-time candidate even when flat
    measured faster and ignores ``latency_ms`` for candidates, which makes the choice
    independent of timing noise; ``candidates`` replaces :func:`candidate_specs`.
    """
    request = AutoRequest.from_params(params)
    n, code_size = codes.shape
    rng = np.random.default_rng(seed)
    report: dict = {"request": {"recall": request.recall, "k": request.k, "latency_ms": request.latency_ms,
                                "memory_mb": request.memory_mb, "noise": request.noise},
                    "n": int(n), "bits": int(bits), "candidates": []}
    start = time.perf_counter()
    budget = None if request.memory_mb is None else request.memory_mb * 2**20
    flat_bytes = estimated_bytes(IndexSpec("flat"), n, code_size)
    if budget is not None and flat_bytes > budget:
        raise ValueError(f"auto: {n} codes of {bits} bits need {flat_bytes / 2**20:.1f} MiB even in a flat "
                         f"index, over memory_mb={request.memory_mb}")
    flat = faiss.IndexBinaryFlat(bits)
    flat.add(codes)
    calibration = Calibration.draw(codes, flat, request.k, request.noise, rng)
    flat_ms = _single_ms_in_alternation(flat, "flat", [{}], calibration.queries[:LATENCY_QUERIES])[0]
    report["flat_latency_ms"] = flat_ms
    report["calibration"] = calibration.describe()

    def choose_flat(reason: str, met: bool = True, warn: bool = False) -> AutoChoice:
        report.update(chosen="flat", reason=reason, request_met=met, recall=1.0, latency_ms=flat_ms,
                      memory_bytes=int(flat_bytes), tuning_s=time.perf_counter() - start)
        if warn:
            warnings.warn(f"auto: {reason}", stacklevel=3)
        return AutoChoice(IndexSpec("flat"), flat, report)

    if request.recall >= 1.0:
        return choose_flat("exact recall requested")
    if n < MIN_IVF_CODES:
        return choose_flat(f"fewer than {MIN_IVF_CODES} codes: flat is already fast and exact")
    if request.latency_ms is not None and flat_ms <= request.latency_ms:
        return choose_flat(f"flat meets latency_ms={request.latency_ms} ({flat_ms:.3f} ms measured)")

    target = request.recall + RECALL_MARGIN
    best: tuple[IndexSpec, faiss.IndexBinary, dict] | None = None
    for spec in candidates or candidate_specs(n, bits):
        row: dict = {"spec": str(spec), "estimated_bytes": estimated_bytes(spec, n, code_size)}
        report["candidates"].append(row)
        if budget is not None and row["estimated_bytes"] > budget:
            row["skipped"] = f"needs {row['estimated_bytes'] / 2**20:.1f} MiB, over memory_mb={request.memory_mb}"
            continue
        build_start = time.perf_counter()
        index = _build(spec, codes, bits, rng)
        row["build_s"] = time.perf_counter() - build_start
        row["memory_bytes"] = int(faiss.serialize_index_binary(index).nbytes)
        params, recall, latency_ms = _tune(index, spec.kind, calibration, target)
        row.update(param=params, recall=recall, latency_ms=latency_ms)
        row["meets"] = bool(recall >= target and (not compare_latency or (
            row["latency_ms"] < flat_ms
            and (request.latency_ms is None or row["latency_ms"] <= request.latency_ms))))
        if row["meets"] and (best is None or row["latency_ms"] < best[2]["latency_ms"]):
            best = (IndexSpec(spec.kind, spec.args, params), index, row)
        del index
    if best is None:
        tried = "; ".join(f"{r['spec']}: " + (r.get("skipped") or f"recall {r['recall']:.3f} at {r['param']}, "
                                                                  f"{r['latency_ms']:.3f} ms")
                          for r in report["candidates"])
        return choose_flat(f"no candidate reaches recall@{request.k} >= {target:g}"
                           + (f" faster than flat ({flat_ms:.3f} ms)" if compare_latency else "") + (f" and within latency_ms={request.latency_ms}"
                                                    if request.latency_ms is not None else "")
                           + f" [{tried}]; flat (exact) instead", warn=True,
                           met=request.latency_ms is None or flat_ms <= request.latency_ms)
    spec, index, row = best
    del flat
    report.update(chosen=str(spec), request_met=True, recall=row["recall"], latency_ms=row["latency_ms"],
                  memory_bytes=row["memory_bytes"], build_s=row["build_s"],
                  reason=f"fastest candidate reaching calibrated recall@{request.k} >= {target:g}",
                  tuning_s=time.perf_counter() - start)
    return AutoChoice(spec, index, report)


@dataclass
class Calibration:
    """Out-of-index calibration queries: database rows ``sources`` with bits flipped, and
    their exact ``k``-NN with the source row dropped."""

    queries: np.ndarray
    sources: np.ndarray
    exact_kth: np.ndarray
    k: int
    noise: float

    @classmethod
    def draw(cls, codes: np.ndarray, flat: faiss.IndexBinary, k: int, noise: float,
             rng: np.random.Generator) -> "Calibration":
        n = len(codes)
        sources = np.sort(rng.choice(n, size=min(n, TUNING_QUERIES), replace=False))
        flips = rng.random((len(sources), codes.shape[1] * 8), dtype=np.float32) < noise
        queries = codes[sources] ^ np.packbits(flips, axis=1, bitorder="little")
        kept_D, _ = drop_sources(*flat.search(queries, k + 1), sources, k)
        return cls(queries, sources, kept_D[:, k - 1], k, noise)

    def recall(self, search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]) -> float:
        """Distance recall@k of ``search`` on these queries, each query's source row dropped."""
        D, I = search(self.queries, self.k + 1)
        kept_D, kept_I = drop_sources(D, I, self.sources, self.k)
        return float(((kept_I >= 0) & (kept_D <= self.exact_kth[:, None])).mean())

    def describe(self) -> str:
        return (f"distance recall@{self.k} on {len(self.sources)} database codes with each bit flipped with "
                f"p={self.noise:g} (not in the index: the source code is dropped from every answer)")


def drop_sources(D: np.ndarray, I: np.ndarray, sources: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep ``k`` of the ``k + 1`` results per row: drop the row's source id where it was
    returned, else the last slot."""
    is_source = I == sources[:, None]
    drop = np.where(is_source.any(axis=1), is_source.argmax(axis=1), k)
    keep = np.ones_like(is_source)
    keep[np.arange(len(I)), drop] = False
    return D[keep].reshape(len(I), k), I[keep].reshape(len(I), k)


def _build(spec: IndexSpec, codes: np.ndarray, bits: int, rng: np.random.Generator) -> faiss.IndexBinary:
    index = spec.build(bits)
    if spec.needs_training:
        n_train = min(len(codes), TRAIN_CODES_PER_LIST * spec.args[0])
        spec.train(index, codes[np.sort(rng.choice(len(codes), size=n_train, replace=False))])
    spec.add(index, codes)
    return index


def _param_limit(index: faiss.IndexBinary, kind: str) -> int:
    """The largest value of the kind's search parameter tuning tries (for ``nprobe``: every list)."""
    param = KINDS[kind].params[0]
    if param == "nprobe":
        return int(index.nlist)
    if param == "nflip":  # buckets probed per table grow as b^nflip
        return min(int(index.b), MAX_NFLIP)
    return MAX_EF_SEARCH


def tune_search_param(index: faiss.IndexBinary, kind: str, recall_of: Callable, target: float
                      ) -> tuple[str, int, float]:
    """Smallest value of the kind's search parameter (``nprobe`` / ``efSearch`` / ``nflip``)
    whose ``recall_of(index.search)`` reaches ``target``: doubling, then bisection (recall
    never drops as the parameter grows). Returns ``(name, value, recall)``; the parameter is
    left at that value."""
    param = KINDS[kind].params[0]
    cache: dict[int, float] = {}

    def recall_at(value: int) -> float:
        if value not in cache:
            apply_search_params(index, kind, {param: value})
            cache[value] = recall_of(index.search)
        return cache[value]

    limit = _param_limit(index, kind)
    lo, hi = SEARCH_PARAMS[param].minimum - 1, SEARCH_PARAMS[param].minimum  # recall_at(lo) < target
    while hi < limit and recall_at(hi) < target:
        lo, hi = hi, min(limit, max(1, hi * 2))
    if recall_at(hi) >= target:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if recall_at(mid) >= target:
                hi = mid
            else:
                lo = mid
    apply_search_params(index, kind, {param: hi})
    return param, hi, recall_at(hi)


def _tune(index: faiss.IndexBinary, kind: str, calibration: "Calibration", target: float
          ) -> tuple[dict, float, float]:
    """Tune the kind's first search parameter to ``target`` (:func:`tune_search_param`) at each
    setting of its second (an HNSW quantiser's ``quantizer_efSearch``: a deeper quantiser search
    finds the right lists with fewer probes); returns the fastest setting that reaches ``target``
    (else the most accurate) as ``(params, calibrated recall, median latency in ms)``, applied.
    The settings reaching ``target`` are timed in alternation, query by query, so that a load
    that comes and goes during tuning weighs on each of them alike."""
    settings = [{}] if len(KINDS[kind].params) < 2 else [{KINDS[kind].params[1]: v} for v in QUANTIZER_EF_SEARCH]
    tried = []
    for extra in settings:
        apply_search_params(index, kind, extra)
        param, value, recall = tune_search_param(index, kind, calibration.recall, target)
        tried.append(({param: value, **extra}, recall))
    contenders = [t for t in tried if t[1] >= target] or [max(tried, key=lambda t: t[1])]
    latency = _single_ms_in_alternation(index, kind, [params for params, _ in contenders],
                                        calibration.queries[:LATENCY_QUERIES])
    (params, recall), latency_ms = min(zip(contenders, latency), key=lambda pair: pair[1])
    apply_search_params(index, kind, params)
    return params, recall, latency_ms


def _single_ms_in_alternation(index: faiss.IndexBinary, kind: str, settings: list[dict],
                              queries: np.ndarray) -> list[float]:
    """Median one-query latency (ms, k = 8) of ``index`` at each of its search-parameter
    ``settings``, the settings taking turns query by query (each call sets its own), on one
    OpenMP thread: a single query gains nothing from more, and on a loaded machine each one
    then waits for a descheduled thread (24 ms per query measured at 10M with two threads)."""
    def at(params: dict) -> Callable:
        def search(q: np.ndarray, k: int):
            apply_search_params(index, kind, params)
            return index.search(q, k)
        return search

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        latency = time_single({str(i): at(params) for i, params in enumerate(settings)}, queries, 8,
                              budget_s=math.inf, max_samples=len(queries))
    finally:
        faiss.omp_set_num_threads(threads)
    return [latency[str(i)].median_ms for i in range(len(settings))]
