"""Latency benchmarks: every index kind side by side with raw Faiss, numpy and usearch.

:func:`run_latency_benchmark` measures, for each database size and kind of synthetic
codes (:func:`hashindex.datasets.synthetic_codes`, uniform and clustered):

- each index kind (flat, IVF over an ``nprobe`` sweep, HNSW over ``efSearch``, MultiHash
  over ``nflip``, and ``auto``): build time, memory, queries per second with batches of
  ``batch`` queries, single-query latency (median and p99), for k = 8 and k = 1000, and
  distance recall@k against exact flat search;
- the same Faiss index searched directly (hashindex's own overhead), numpy brute force
  (XOR + ``np.bitwise_count``) and usearch's binary Hamming index (exact and HNSW);
- padding of code widths without a fast Faiss kernel, ``search_rerank`` over stored
  float16 features, and loading HDF5 shards into an index;
- GpuIndexBinaryFlat when ``faiss.get_num_gpus() > 0``.

Each measurement is time-bounded (``budget_s``): single queries repeat until the budget is
spent (at least ``MIN_SAMPLES``), batches are cut to what fits it, and the JSON records
how many queries each figure rests on. Systems compared head to head are timed in
alternation, so background load hits them alike. The issue's targets are evaluated as
ratios measured within the run (:func:`compute_targets`).

Distance recall@k: a returned neighbour counts when its Hamming distance (recomputed here
from the returned id) is at most the exact k-th distance; Hamming distances tie
massively, so id overlap with the exact result would understate correct answers.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import click
import faiss
import numpy as np

from .autotune import choose_nlist
from .codes import MISSING_DISTANCE
from .datasets import synthetic_codes
from .index import HashIndex
from .spec import parse_spec

#: ``(queries, k) -> ids``: an ``(nq, k)`` int64 array, ``-1`` where no neighbour was returned.
SearchFn = Callable[[object, int], np.ndarray]

MIN_SAMPLES = 5
MIN_BATCH = 10
#: Queries of the code-width section (its unpadded widths are the slowest searches of the run).
WIDTH_QUERIES = 200
_NUMPY_BLOCK_ELEMENTS = 1 << 23
_TARGET_RECALL = 0.95


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
    hnsw_data: tuple[str, ...] = ("clustered",)
    multihash_bits: int = 16
    nflips: tuple[int, ...] = (0, 1, 2)
    auto_recall: float = _TARGET_RECALL
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


# ---------------------------------------------------------------------------- environment
def environment() -> dict:
    """Machine, load and library versions, for the results file."""
    import h5py

    from . import __version__

    versions = {"python": sys.version.split()[0], "numpy": np.__version__, "faiss": faiss.__version__,
                "h5py": h5py.__version__, "hashindex": __version__}
    try:
        import usearch

        versions["usearch"] = usearch.__version__
    except ImportError:
        versions["usearch"] = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "faiss_compile_options": faiss.get_compile_options(),
        "memory_bytes": memory,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": commit,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ---------------------------------------------------------------------------- timing
@dataclass
class Latency:
    """Single-query latency statistics, milliseconds."""

    median_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    samples: int

    @classmethod
    def from_seconds(cls, samples: list[float]) -> "Latency":
        ms = np.asarray(samples) * 1e3
        return cls(float(np.median(ms)), float(np.percentile(ms, 99)), float(ms.mean()), float(ms.min()), len(ms))


def time_single(fns: dict[str, SearchFn], queries, k: int, budget_s: float, max_samples: int = 300,
                min_samples: int = MIN_SAMPLES) -> dict[str, Latency]:
    """One query per call, the systems in ``fns`` in alternation, until ``budget_s`` is spent.

    System ``j`` starts its query sequence ``j / len(fns)`` of the way into ``queries``: had
    two systems searched the same query back to back, the second would find the data the
    first just touched in its caches (that made raw Faiss look 6 µs faster per IVF query).
    """
    for fn in fns.values():
        fn(queries[0:1], k)  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in fns}
    n = len(queries)
    offsets = {name: j * n // len(fns) for j, name in enumerate(fns)}
    deadline = time.perf_counter() + budget_s
    for i in range(min(max_samples, n)):
        for name, fn in fns.items():
            row = (i + offsets[name]) % n
            q = queries[row : row + 1]
            t0 = time.perf_counter()
            fn(q, k)
            samples[name].append(time.perf_counter() - t0)
        if i + 1 >= min_samples and time.perf_counter() > deadline:
            break
    return {name: Latency.from_seconds(s) for name, s in samples.items()}


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
    times: dict[str, list[float]] = {name: [] for name in fns}
    first: dict[str, np.ndarray] = {}
    deadline = time.perf_counter() + budget_s
    rounds = 0
    names = list(fns)
    while rounds < 3 or (time.perf_counter() < deadline and rounds < 50):
        for name in names[rounds % len(names):] + names[: rounds % len(names)]:  # each goes first in turn
            fn = fns[name]
            t0 = time.perf_counter()
            ids = fn(q, k)
            times[name].append(time.perf_counter() - t0)
            first.setdefault(name, ids)
        rounds += 1
    return {name: BatchResult(n / float(np.median(t[1:])), n / min(t[1:]), n, len(t) - 1, first[name])
            for name, t in times.items()}


def _timed(build: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = build()
    return out, time.perf_counter() - t0


# ---------------------------------------------------------------------------- recall
def returned_distances(queries: np.ndarray, database: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """True Hamming distances of returned ids (``MISSING_DISTANCE`` for ``-1``), recomputed from
    the codes rather than taken from the index under test."""
    valid = ids >= 0
    gathered = database[np.where(valid, ids, 0)]
    dist = np.bitwise_count(gathered ^ queries[:, None, :]).sum(axis=2, dtype=np.int64)
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


def _threads() -> int:
    """Threads Faiss uses (``faiss.omp_set_num_threads``); usearch is given the same number."""
    return int(faiss.omp_get_max_threads())


def _usearch_ids(matches, nq: int, k: int) -> np.ndarray:
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
        return _usearch_ids(search(database, q, k, MetricKind.Hamming, exact=True, threads=_threads()), len(q), k)

    return fn


def usearch_hnsw(database: np.ndarray, bits: int, connectivity: int, expansion_add: int):
    """usearch's HNSW over bit vectors (``dtype='b1'``, Hamming), built with all threads."""
    from usearch.index import Index

    index = Index(ndim=bits, metric="hamming", dtype="b1", connectivity=connectivity,
                  expansion_add=expansion_add)
    index.add(np.arange(len(database), dtype=np.uint64), database, threads=_threads())
    return index


# ---------------------------------------------------------------------------- per-section context
@dataclass
class _Context:
    cfg: BenchConfig
    size: int
    data: str
    bits: int
    database: np.ndarray
    queries: np.ndarray
    kth: dict[int, np.ndarray] = field(default_factory=dict)
    ks: tuple[int, ...] = (8,)

    def row(self, system: str, kind: str, spec: str, build_s, memory_bytes, k: int, measured: dict,
            section: str = "kinds", **extra) -> dict:
        return {"section": section, "size": self.size, "data": self.data, "bits": self.bits,
                "system": system, "kind": kind, "spec": spec, "build_s": build_s,
                "memory_bytes": memory_bytes, "k": k, **measured, **extra}


def _measure(ctx: _Context, fns: dict[str, SearchFn], ks: tuple[int, ...] | None = None) -> dict[str, dict]:
    """For each k: single-query latency and batch QPS of every system in ``fns`` (timed in
    alternation), and distance recall of the batch results. ``{name: {k: figures}}``."""
    cfg = ctx.cfg
    out: dict[str, dict] = {name: {} for name in fns}
    for k in ks or ctx.ks:
        single = time_single(fns, ctx.queries, k, cfg.budget_s, cfg.max_single_queries)
        per_query = max(lat.min_ms for lat in single.values()) / 1e3
        batch = time_batch(fns, ctx.queries, k, cfg.batch, cfg.budget_s, per_query)
        for name in fns:
            b = batch[name]
            recall = distance_recall(ctx.queries[: b.queries], ctx.database, b.ids, ctx.kth[k][: b.queries])
            out[name][k] = {"recall": recall, "recall_queries": b.queries, "qps": b.qps, "best_qps": b.best_qps,
                            "batch_queries": b.queries, "batch_calls": b.calls,
                            "latency_ms": asdict(single[name])}
    return out


def _hashindex_fn(index: HashIndex) -> SearchFn:
    return lambda q, k: index.search(q, k)[1]


def _faiss_fn(index: faiss.IndexBinary) -> SearchFn:
    return lambda q, k: index.search(q, k)[1]


def _faiss_bytes(index: faiss.IndexBinary) -> int:
    return int(faiss.serialize_index_binary(index).nbytes)


def _hashindex_bytes(index: HashIndex) -> int:
    extra = index.labels.nbytes + index.ids.nbytes
    if index.features is not None:
        extra += index.features.nbytes
    return _faiss_bytes(index.faiss_index) + int(extra)


# ---------------------------------------------------------------------------- sections
def _bench_kinds(ctx: _Context, log, features: np.ndarray | None = None) -> tuple[list[dict], dict]:
    """Flat, IVF, HNSW, MultiHash, auto, numpy and usearch on one (size, data) database.
    Returns the rows and the IVF HashIndex (for the rerank section)."""
    cfg = ctx.cfg
    rows: list[dict] = []

    def add_rows(system, kind, spec, build_s, memory, measured, **extra):
        for k, figures in measured.items():
            rows.append(ctx.row(system, kind, spec, build_s, memory, k, figures, **extra))

    _bench_exact(ctx, add_rows, log)
    ivf = _bench_ivf(ctx, add_rows, log, features)
    if ctx.size <= cfg.hnsw_max_size and ctx.data in cfg.hnsw_data:
        _bench_hnsw(ctx, add_rows, log)
    _bench_multihash(ctx, add_rows, log)
    auto = HashIndex(ctx.bits, f"auto,recall={cfg.auto_recall:g}")
    _, build = _timed(lambda: auto.add(ctx.database))
    log(f"  auto,recall={cfg.auto_recall:g} -> {auto.spec} in {build:.1f} s (tuning included)")
    # auto is timed in alternation with the fastest raw Faiss IVF reaching the same recall, so
    # that the target compares two figures of one measurement.
    fns = {"hashindex": _hashindex_fn(auto)}
    hand = _fastest(_select(rows, system="faiss", kind="IVF", k=min(ctx.ks)), cfg.auto_recall)
    if hand is not None:
        ivf.set_search_params(**parse_spec(hand["spec"]).params)
        fns["faiss"] = _faiss_fn(ivf.faiss_index)
    m = _measure(ctx, fns)
    for k, figures in m["hashindex"].items():
        paired = None if hand is None else {"spec": hand["spec"], **m["faiss"][k]}
        rows.append(ctx.row("hashindex", "auto", str(auto.spec), build, _hashindex_bytes(auto), k, figures,
                            auto=auto.metadata.get("auto"), paired_faiss=paired))
    return rows, {"ivf": ivf}


def _bench_exact(ctx: _Context, add_rows, log) -> None:
    """hashindex flat, a separately built raw Faiss flat (also the ground truth), numpy, usearch exact."""
    cfg, db = ctx.cfg, ctx.database
    hi, hi_build = _timed(lambda: _filled(HashIndex(ctx.bits, "flat"), db))
    raw, raw_build = _timed(lambda: _faiss_flat(db, ctx.bits))
    (gt_D, _), gt_s = _timed(lambda: raw.search(ctx.queries, max(cfg.ks)))
    ctx.kth = {k: gt_D[:, k - 1] for k in cfg.ks}
    log(f"  flat built ({hi_build:.2f} s hashindex, {raw_build:.2f} s Faiss); ground truth in {gt_s:.1f} s")
    m = _measure(ctx, {"hashindex": _hashindex_fn(hi), "faiss": _faiss_fn(raw)})
    add_rows("hashindex", "flat", "flat", hi_build, _hashindex_bytes(hi), m["hashindex"])
    add_rows("faiss", "flat", "IndexBinaryFlat", raw_build, _faiss_bytes(raw), m["faiss"])
    if cfg.numpy:
        npy, build = _timed(lambda: NumpyHamming(db))
        add_rows("numpy", "exact", "XOR + np.bitwise_count", build, int(db.nbytes),
                 _measure(ctx, {"numpy": npy.search})["numpy"])
    if cfg.usearch:
        add_rows("usearch", "exact", "search(exact=True)", 0.0, int(db.nbytes),
                 _measure(ctx, {"usearch": usearch_exact(db)})["usearch"])
    log("  exact baselines done")


def _bench_ivf(ctx: _Context, add_rows, log, features: np.ndarray | None) -> HashIndex:
    """IVF with nlist ~ sqrt(n), trained on ``train_per_list`` codes per list; nprobe sweep."""
    cfg, db = ctx.cfg, ctx.database
    nlist = choose_nlist(ctx.size)
    ivf = HashIndex(ctx.bits, f"IVF{nlist}")
    rng = np.random.default_rng(cfg.seed)
    train_rows = np.sort(rng.choice(ctx.size, size=min(ctx.size, cfg.train_per_list * nlist), replace=False))
    _, train_s = _timed(lambda: ivf.train(db[train_rows]))
    _, add_s = _timed(lambda: ivf.add(db, features=features))
    memory = _hashindex_bytes(ivf) - (0 if features is None else features.nbytes)
    log(f"  IVF{nlist}: trained in {train_s:.1f} s on {len(train_rows)} codes, filled in {add_s:.1f} s")
    _sweep(ctx, add_rows, ivf, "IVF", "nprobe", [p for p in cfg.nprobes if p <= nlist], train_s + add_s, memory,
           train_s=train_s)
    return ivf


def _sweep(ctx: _Context, add_rows, index: HashIndex, kind: str, param: str, values, build_s: float, memory: int,
           **extra) -> None:
    """At each value of the search parameter ``param``: ``index`` and the raw Faiss index inside
    it, timed in alternation, one row each."""
    for value in values:
        index.set_search_params(**{param: value})
        m = _measure(ctx, {"hashindex": _hashindex_fn(index), "faiss": _faiss_fn(index.faiss_index)})
        add_rows("hashindex", kind, str(index.spec), build_s, memory, m["hashindex"], **extra)
        add_rows("faiss", kind, str(index.spec), None, _faiss_bytes(index.faiss_index), m["faiss"])


def _bench_hnsw(ctx: _Context, add_rows, log) -> None:
    """Faiss HNSW (through hashindex) and usearch HNSW with the same M and construction depth."""
    cfg, db = ctx.cfg, ctx.database
    hnsw = HashIndex(ctx.bits, f"HNSW{cfg.hnsw_m}")
    hnsw.faiss_index.hnsw.efConstruction = cfg.hnsw_ef_construction
    _, build = _timed(lambda: hnsw.add(db))
    memory = _hashindex_bytes(hnsw)
    log(f"  HNSW{cfg.hnsw_m}: built in {build:.1f} s")
    _sweep(ctx, add_rows, hnsw, "HNSW", "efSearch", cfg.ef_searches, build, memory)
    del hnsw
    if not cfg.usearch:
        return
    uidx, build = _timed(lambda: usearch_hnsw(db, ctx.bits, cfg.hnsw_m, cfg.hnsw_ef_construction))
    log(f"  usearch HNSW M={cfg.hnsw_m}: built in {build:.1f} s")
    for ef in cfg.ef_searches:
        uidx.expansion_search = ef
        m = _measure(ctx, {"usearch": lambda q, k: _usearch_ids(uidx.search(q, k, threads=_threads()), len(q), k)})
        add_rows("usearch", "HNSW", f"HNSW M={cfg.hnsw_m} efC={cfg.hnsw_ef_construction} ef={ef}", build,
                 int(uidx.memory_usage), m["usearch"])


def _bench_multihash(ctx: _Context, add_rows, log) -> None:
    """MultiHash with as many ``multihash_bits``-bit tables as the code holds; nflip sweep."""
    cfg = ctx.cfg
    nhash = max(1, ctx.bits // cfg.multihash_bits)
    mh = HashIndex(ctx.bits, f"MultiHash{nhash}x{cfg.multihash_bits}")
    _, build = _timed(lambda: mh.add(ctx.database))
    memory = _hashindex_bytes(mh)
    log(f"  MultiHash{nhash}x{cfg.multihash_bits}: built in {build:.1f} s")
    _sweep(ctx, add_rows, mh, "MultiHash", "nflip", cfg.nflips, build, memory)


def _filled(index: HashIndex, db: np.ndarray, **kwargs) -> HashIndex:
    index.add(db, **kwargs)
    return index


def _faiss_flat(db: np.ndarray, bits: int) -> faiss.IndexBinaryFlat:
    index = faiss.IndexBinaryFlat(bits)
    index.add(db)
    return index


def _bench_widths(cfg: BenchConfig, size: int, log) -> list[dict]:
    """Flat search per code width: hashindex (zero-padded to a fast width when that applies)
    against raw Faiss at the native width, k = 8."""
    rows = []
    n_queries = min(cfg.queries, WIDTH_QUERIES)
    for bits in cfg.widths:
        codes = synthetic_codes(size, n_queries, bits, "uniform", seed=cfg.seed)
        ctx = _Context(cfg, size, "uniform", bits, codes.database, codes.queries, ks=(8,))
        hi, hi_build = _timed(lambda: _filled(HashIndex(bits, "flat"), codes.database))
        raw, raw_build = _timed(lambda: _faiss_flat(codes.database, bits))
        # Ground truth from the padded index (the fast one); the unpadded raw Faiss results are
        # checked against it, so a padding error would show as recall < 1 on one of the two.
        ctx.kth = {8: hi.search(codes.queries, 8)[0][:, 7]}
        m = _measure(ctx, {"hashindex": _hashindex_fn(hi), "faiss": _faiss_fn(raw)})
        rows.append(ctx.row("hashindex", "flat", "flat", hi_build, _hashindex_bytes(hi), 8, m["hashindex"][8],
                            section="widths", faiss_bits=hi.faiss_bits))
        rows.append(ctx.row("faiss", "flat", "IndexBinaryFlat", raw_build, _faiss_bytes(raw), 8, m["faiss"][8],
                            section="widths", faiss_bits=bits))
        ratio = m["hashindex"][8]["qps"] / m["faiss"][8]["qps"]
        log(f"  {bits}-bit flat at {size:,}: hashindex stores {hi.faiss_bits} bits, {ratio:.2f}x raw Faiss QPS")
        del hi, raw, codes
    return rows


def _synthetic_features(n: int, dim: int, seed: int) -> np.ndarray:
    """float16 stand-ins for F7 features: a random block tiled to ``n`` rows (rerank latency
    depends on the gather, not on the values)."""
    block = np.random.default_rng(seed).standard_normal((min(n, 1 << 16), dim), dtype=np.float32)
    reps = -(-n // len(block))
    return np.tile(block.astype(np.float16), (reps, 1))[:n]


class _RerankQueries:
    """Query codes and query features sliced together (what the timing loops hand to a search)."""

    def __init__(self, codes: np.ndarray, features: np.ndarray) -> None:
        self.codes, self.features = codes, features

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, rows: slice) -> "_RerankQueries":
        return _RerankQueries(self.codes[rows], self.features[rows])


def _bench_rerank(ctx: _Context, features: np.ndarray, ivf: HashIndex | None, ivf_rows: list[dict], log) -> list[dict]:
    """``search_rerank`` (k = 8 from ``candidates`` Hamming candidates) against Hamming-only search."""
    cfg = ctx.cfg
    flat, build = _timed(lambda: _filled(HashIndex(ctx.bits, "flat"), ctx.database, features=features))
    qf = np.random.default_rng(cfg.seed + 1).standard_normal((len(ctx.queries), features.shape[1]),
                                                             dtype=np.float32)
    pair = _RerankQueries(ctx.queries, qf)
    rows = []

    def timed_rows(index: HashIndex, label: str, build_s: float, coarse_recall: float | None):
        fns = {
            "rerank": lambda q, k: index.search_rerank(q.codes, q.features, k=k, candidates=cfg.candidates)[1],
            "hamming": lambda q, k: index.search(q.codes, k)[1],
            "coarse": lambda q, k: index.search(q.codes, cfg.candidates)[1],
        }
        single = time_single(fns, pair, 8, cfg.budget_s * 2, cfg.max_single_queries)
        per_query = max(lat.min_ms for lat in single.values()) / 1e3
        batch = time_batch(fns, pair, 8, cfg.batch, cfg.budget_s * 2, per_query)
        what = {"rerank": f"search_rerank(k=8, candidates={cfg.candidates})", "hamming": "search(k=8)",
                "coarse": f"search(k={cfg.candidates})"}
        for name in fns:
            rows.append({"section": "rerank", "size": ctx.size, "data": ctx.data, "bits": ctx.bits,
                         "index": label, "search": what[name], "feature_dim": int(features.shape[1]),
                         "feature_dtype": str(features.dtype), "build_s": build_s,
                         "coarse_recall_at_candidates": coarse_recall, "qps": batch[name].qps,
                         "best_qps": batch[name].best_qps,
                         "batch_queries": batch[name].queries, "latency_ms": asdict(single[name])})
        log(f"  rerank over {label}: {single['rerank'].median_ms:.2f} ms/query "
            f"(Hamming k=8 {single['hamming'].median_ms:.2f} ms)")

    timed_rows(flat, "flat", build, 1.0)
    del flat
    if ivf is not None and ivf.features is not None:
        good = [r for r in ivf_rows if r["system"] == "hashindex" and r["kind"] == "IVF"
                and r["k"] == max(ctx.ks) and r["recall"] >= _TARGET_RECALL]
        if good and max(ctx.ks) >= cfg.candidates:
            best = min(good, key=lambda r: r["latency_ms"]["median_ms"])
            ivf.set_search_params(**parse_spec(best["spec"]).params)
            timed_rows(ivf, str(ivf.spec), best["build_s"], best["recall"])
    return rows


def _bench_shards(cfg: BenchConfig, database: np.ndarray, bits: int, log) -> dict:
    """Write ``database`` as HDF5 shards (codes + labels), then time ``HashIndex.from_shards``."""
    from .store import ShardWriter

    n = len(database)
    labels = np.arange(n, dtype=np.int64) % 100
    with tempfile.TemporaryDirectory(prefix="hashindex-bench-") as tmp:
        def write():
            with ShardWriter(Path(tmp) / "store", bits, shard_size=cfg.shard_size) as writer:
                writer.add(database, labels=labels)

        _, write_s = _timed(write)
        loads = []
        for _ in range(2):
            index, load_s = _timed(lambda: HashIndex.from_shards(Path(tmp) / "store", "flat", progress=False))
            loads.append(load_s)
            head = index.faiss_index.reconstruct_n(0, min(n, 1000))[:, : database.shape[1]]  # minus padding
            ok = len(index) == n and np.array_equal(head, database[: min(n, 1000)])
            del index
    result = {"size": n, "bits": bits, "shard_size": cfg.shard_size, "fields": ["codes", "labels", "ids"],
              "write_s": write_s, "load_s": min(loads), "load_s_all": loads,
              "load_s_per_million": min(loads) / (n / 1e6), "content_checked": bool(ok),
              "note": "page cache warm (shards just written); spec flat"}
    log(f"  shards -> flat index: {result['load_s']:.2f} s for {n:,} codes "
        f"({result['load_s_per_million']:.3f} s per million)")
    return result


def _bench_gpu(cfg: BenchConfig, log) -> dict:
    """GpuIndexBinaryFlat at every size (batch 1 and ``batch``), when a GPU is visible."""
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if not hasattr(faiss, "GpuIndexBinaryFlat"):
        return {"skipped": "no GPU: this Faiss build has no GPU support (faiss-cpu)", "num_gpus": 0}
    if n_gpus <= 0:
        return {"skipped": "no GPU: faiss.get_num_gpus() == 0", "num_gpus": 0}
    resources = faiss.StandardGpuResources()
    rows = []
    for size in cfg.sizes:
        codes = synthetic_codes(size, cfg.queries, cfg.bits, "uniform", seed=cfg.seed)
        ctx = _Context(cfg, size, "uniform", cfg.bits, codes.database, codes.queries,
                       ks=tuple(k for k in cfg.ks if k <= 2048))
        gpu, build = _timed(lambda: _filled_gpu(resources, codes.database, cfg.bits))
        if size <= 10_000_000:
            gt = _faiss_flat(codes.database, cfg.bits).search(codes.queries, max(ctx.ks))[0]
        else:  # the CPU ground truth would take minutes; the GPU flat index is exact anyway
            gt = gpu.search(codes.queries, max(ctx.ks))[0]
        ctx.kth = {k: gt[:, k - 1] for k in ctx.ks}
        m = _measure(ctx, {"gpu": _faiss_fn(gpu)})
        for k, figures in m["gpu"].items():
            rows.append(ctx.row("faiss-gpu", "flat", "GpuIndexBinaryFlat", build, int(codes.database.nbytes), k,
                                figures, section="gpu"))
        log(f"  GPU flat at {size:,}: {m['gpu'][ctx.ks[0]]['latency_ms']['median_ms']:.3f} ms/query")
        del gpu
    return {"num_gpus": n_gpus, "rows": rows}


def _filled_gpu(resources, db: np.ndarray, bits: int):
    index = faiss.GpuIndexBinaryFlat(resources, bits)
    index.add(db)
    return index


# ---------------------------------------------------------------------------- the run
def run_latency_benchmark(config: BenchConfig | None = None, out_dir: str | os.PathLike | None = None,
                          name: str = "latency", log: Callable[[str], None] = print) -> dict:
    """Run every section of the benchmark; write ``<name>.json``, ``<name>.md`` and PNG plots
    under ``out_dir`` when given. Returns the results dictionary (what the JSON holds)."""
    cfg = config or BenchConfig()
    start = time.perf_counter()
    cpu_at_start = _cpu_seconds()

    def stamp(msg: str) -> None:
        log(f"[{time.perf_counter() - start:7.1f} s] {msg}")

    result: dict = {"benchmark": "hashindex latency", "environment": environment(), "config": asdict(cfg),
                    "method": _METHOD, "generators": {}, "rows": [], "rerank": [], "shards": None, "gpu": None}
    largest = cfg.sizes[-1]
    for size in cfg.sizes:
        for data in cfg.data:
            codes, gen_s = _timed(lambda: synthetic_codes(size, cfg.queries, cfg.bits, data, seed=cfg.seed))
            stamp(f"{size:,} {data} {cfg.bits}-bit codes (generated in {gen_s:.1f} s)")
            result["generators"][data] = codes.generator
            ctx = _Context(cfg, size, data, cfg.bits, codes.database, codes.queries, ks=cfg.ks)
            rerank_here = cfg.rerank and size == largest and data == ("clustered" if "clustered" in cfg.data
                                                                      else cfg.data[-1])
            features = _synthetic_features(size, cfg.feature_dim, cfg.seed) if rerank_here else None
            rows, kept = _bench_kinds(ctx, stamp, features=features)
            result["rows"].extend(rows)
            if rerank_here:
                stamp(f"rerank over {size:,} codes, {cfg.feature_dim}-d float16 features")
                result["rerank"] = _bench_rerank(ctx, features, kept.get("ivf"), rows, stamp)
            if cfg.shards and size == largest and data == cfg.data[0]:
                stamp(f"shards -> index, {size:,} codes")
                result["shards"] = _bench_shards(cfg, codes.database, cfg.bits, stamp)
            del kept, codes, ctx, features
        if cfg.widths:
            stamp(f"code widths {list(cfg.widths)} at {size:,}")
            result["rows"].extend(_bench_widths(cfg, size, stamp))
    stamp("GPU")
    result["gpu"] = _bench_gpu(cfg, stamp)
    if hasattr(os, "getloadavg"):
        result["environment"]["load_average_at_end"] = list(os.getloadavg())
    cpu_at_end = _cpu_seconds()
    if cpu_at_start and cpu_at_end:
        other_s = (cpu_at_end[0] - cpu_at_start[0]) - (cpu_at_end[1] - cpu_at_start[1])
        result["environment"]["other_processes_cores"] = max(0.0, other_s) / (time.perf_counter() - start)
    result["load_warning"] = _load_warning(result["environment"])
    result["targets"] = compute_targets(result)
    result["elapsed_s"] = time.perf_counter() - start
    if out_dir is not None:
        result["files"] = write_outputs(result, out_dir, name)
    stamp("done")
    return result


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process) so far;
    None where ``/proc/stat`` is missing."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    own = os.times()
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return busy, own.user + own.system + own.children_user + own.children_system


#: Other processes using more than this many cores on average make the run's timings suspect.
_OTHER_CORES_WARNING = 0.2


def _load_warning(env: dict) -> str | None:
    """A warning when other processes took more than ``_OTHER_CORES_WARNING`` cores on average
    during the run (the load average cannot tell: it counts this benchmark's own threads)."""
    other = env.get("other_processes_cores")
    if other is not None and other > _OTHER_CORES_WARNING:
        return (f"other processes kept {other:.2f} of {env.get('usable_cores')} cores busy on average during "
                "the run: timings, single-query ones above all, are noisy")
    return None


_METHOD = {
    "recall": "distance recall@k: share of returned neighbours whose Hamming distance (recomputed from the "
              "codes) is <= the exact k-th distance (flat search), over the batch queries",
    "latency": "single-query search calls, median and p99 over the samples; systems compared head to head "
               "are timed in alternation, each on its own stretch of the queries (no system searches a query "
               "another has just searched, whose data would still be in the caches)",
    "qps": "queries per second with one search call per batch of batch_queries queries (up to config.batch; "
           "cut to fit the time budget for slow systems), from the median call after a warm-up call; best_qps "
           "from the fastest call (less sensitive to other processes)",
    "raw_faiss": "flat: a separately built IndexBinaryFlat; IVF / HNSW / MultiHash: the Faiss index inside "
                 "the HashIndex searched directly (the same trained object)",
    "memory": "Faiss serialised index size; hashindex adds its int64 labels and ids (and features); "
              "usearch: Index.memory_usage; numpy: the code array",
    "ivf": "nlist = power of two nearest sqrt(n); trained on config.train_per_list codes per list",
    "threads": "Faiss and usearch use the same number of threads (every core unless --threads); numpy is "
               "single-threaded",
}


# ---------------------------------------------------------------------------- targets
def _select(rows: list[dict], **where) -> list[dict]:
    return [r for r in rows if all(r.get(key) == value for key, value in where.items())]


def _fastest(rows: list[dict], min_recall: float | None = None) -> dict | None:
    pool = [r for r in rows if min_recall is None or r["recall"] >= min_recall]
    return min(pool, key=lambda r: r["latency_ms"]["median_ms"]) if pool else None


def _target(name: str, goal: str, where: dict, ratio: float | None, threshold: float, measured: dict,
            note: str = "") -> dict:
    met = None if ratio is None else bool(ratio >= threshold)
    out = {"name": name, "goal": goal, "where": where, "ratio": ratio, "threshold": threshold, "met": met,
           "measured": measured}
    if ratio is None:
        out["missed_by"] = None
        out["note"] = note or "not measured in this run"
    else:
        out["missed_by"] = None if met else f"{(1 - ratio / threshold) * 100:.1f}% short of the goal"
        if note:
            out["note"] = note
    return out


def _ms(row: dict) -> float:
    return row["latency_ms"]["median_ms"]


def _brief(row: dict | None, prefix: str) -> dict:
    """A row's spec, recall, single-query median and batch QPS under ``prefix_*`` keys."""
    if row is None:
        return {f"{prefix}": None}
    return {prefix: row["spec"], f"{prefix}_recall": row["recall"], f"{prefix}_ms": _ms(row),
            f"{prefix}_qps": row["qps"]}


def compute_targets(result: dict) -> list[dict]:
    """The issue's targets as ratios measured within this run (``ratio >= threshold`` = met).

    They are read at the largest size (the issue states most of them at 10M codes; a run with
    other sizes says so in each target's note), on clustered codes where the run has them."""
    rows = [r for r in result["rows"] if r["section"] == "kinds"]
    if not rows:
        return []
    largest = max(r["size"] for r in rows)
    data = "clustered" if _select(rows, data="clustered") else rows[0]["data"]
    where = {"size": largest, "data": data, "k": 8}
    at_10m = "" if largest == 10_000_000 else f"the issue sets this at 10M codes; largest size here is {largest:,}"
    targets = []

    def one(**sel) -> dict | None:
        found = _select(rows, **where, **sel)
        return found[0] if found else None

    flat, raw, npy, u_exact = (one(system="hashindex", kind="flat"), one(system="faiss", kind="flat"),
                               one(system="numpy"), one(system="usearch", kind="exact"))
    if flat and raw:
        targets.append(_target("hashindex flat vs raw Faiss flat, batch QPS", ">= 0.95x", where,
                               flat["qps"] / raw["qps"], 0.95, {"hashindex_qps": flat["qps"], "faiss_qps": raw["qps"]}))
        targets.append(_target("hashindex flat vs raw Faiss flat, single-query median", ">= 0.95x", where,
                               _ms(raw) / _ms(flat), 0.95, {"hashindex_ms": _ms(flat), "faiss_ms": _ms(raw),
                                                             "overhead_us": (_ms(flat) - _ms(raw)) * 1e3}))
    if flat and npy:
        targets.append(_target("hashindex exact (flat) vs numpy brute force, batch QPS", ">= 10x", where,
                               flat["qps"] / npy["qps"], 10.0, {"hashindex_qps": flat["qps"], "numpy_qps": npy["qps"]}))
        targets.append(_target("hashindex exact (flat) vs numpy brute force, single query", ">= 10x", where,
                               _ms(npy) / _ms(flat), 10.0, {"hashindex_ms": _ms(flat), "numpy_ms": _ms(npy)}))
    if flat:
        approx = [r for r in _select(rows, system="hashindex", **where) if r["kind"] != "flat"]
        best = _fastest(approx, _TARGET_RECALL)
        measured = {**_brief(best, "best"), "flat_ms": _ms(flat), "flat_qps": flat["qps"]}
        none = "no approximate configuration reached recall 0.95" if best is None else ""
        targets.append(_target("best approximate config (recall@8 >= 0.95) vs exact flat, single-query median",
                               ">= 100x", where, best and _ms(flat) / _ms(best), 100.0, measured, none or at_10m))
        targets.append(_target("best approximate config (recall@8 >= 0.95): single-query median <= 0.2 ms",
                               "<= 0.2 ms", where, best and 0.2 / _ms(best), 1.0, measured, none or at_10m))
    for data_kind in sorted({r["data"] for r in rows}):
        here = {"size": largest, "data": data_kind, "k": 8}
        auto = _select(rows, system="hashindex", kind="auto", **here)
        if auto:
            auto = auto[0]
            level = min(auto["recall"], _TARGET_RECALL)
            hand = _fastest(_select(rows, system="faiss", **here), level)
            # Prefer the figures of the hand-set config timed in alternation with auto.
            paired = auto.get("paired_faiss")
            if hand and paired and paired["spec"] == hand["spec"] and paired["recall"] >= level:
                hand = dict(hand, latency_ms=paired["latency_ms"], qps=paired["qps"], recall=paired["recall"])
                how = "timed in alternation"
            else:
                how = "timed in separate sections"
            # The same comparison inside hashindex separates tuning quality from wrapper overhead.
            mine = _fastest([r for r in _select(rows, system="hashindex", **here) if r["kind"] != "auto"], level)
            why = ""
            if hand and auto["spec"] == hand["spec"] and _ms(hand) < _ms(auto):
                why = ("auto chose the hand-set configuration itself; the gap is its own build of the index "
                       "(k-means on another sample) plus hashindex's per-call cost over raw Faiss")
            targets.append(_target(
                f"auto vs best hand-set raw Faiss config at the same recall ({data_kind}), single-query median",
                ">= 1x", here, hand and _ms(hand) / _ms(auto), 1.0,
                {**_brief(auto, "auto"), **_brief(hand, "hand_set"), "timing": how,
                 "auto_requested_recall": result["config"]["auto_recall"],
                 "vs_best_hand_set_hashindex": mine and _ms(mine) / _ms(auto),
                 "hand_set_hashindex": mine and mine["spec"]}, why))
    widths = [r for r in result["rows"] if r["section"] == "widths"]
    widths = [r for r in widths if r["size"] == max(w["size"] for w in widths)] if widths else []
    for bits in sorted({r["bits"] for r in widths}):
        h, f = _select(widths, system="hashindex", bits=bits), _select(widths, system="faiss", bits=bits)
        if h and f and h[0]["faiss_bits"] != bits:
            h, f = h[0], f[0]
            targets.append(_target(f"{bits}-bit flat padded to {h['faiss_bits']} vs unpadded, batch QPS", ">= 2x",
                                   {"size": h["size"], "data": "uniform", "k": 8}, h["qps"] / f["qps"], 2.0,
                                   {"padded_qps": h["qps"], "unpadded_qps": f["qps"],
                                    "single_query_ratio": _ms(f) / _ms(h)}))
    reranks = [r for r in result.get("rerank") or [] if r["search"].startswith("search_rerank")]
    if reranks:
        # Every coarse step measured holds recall@candidates >= 0.95 (flat: 1); the fastest counts.
        r = min(reranks, key=_ms)
        targets.append(_target(
            f"coarse-then-fine top-{result['config']['candidates']} over {r['size']:,} codes "
            f"({r['index']} coarse step), single-query median <= 15 ms", "<= 15 ms",
            {"size": r["size"], "data": r["data"]}, 15.0 / _ms(r), 1.0,
            {"ms": _ms(r), "p99_ms": r["latency_ms"]["p99_ms"],
             "coarse_recall_at_candidates": r["coarse_recall_at_candidates"],
             "by_coarse_index": {x["index"]: _ms(x) for x in reranks}},
            "" if r["size"] == 10_000_000 else f"the issue sets this at 10M codes; measured at {r['size']:,}"))
    shards = result.get("shards")
    if shards:
        per_10m = shards["load_s_per_million"] * 10
        targets.append(_target("HDF5 shards -> index load of 10M codes <= 2 s", "<= 2 s", {"size": shards["size"]},
                               2.0 / per_10m, 1.0, {"load_s": shards["load_s"], "seconds_per_10M": per_10m},
                               "" if shards["size"] == 10_000_000 else "scaled linearly from the measured size"))
    if flat and u_exact:
        targets.append(_target("hashindex flat vs usearch exact, single-query median", ">= 1x", where,
                               _ms(u_exact) / _ms(flat), 1.0,
                               {"hashindex_ms": _ms(flat), "usearch_ms": _ms(u_exact),
                                "qps_ratio": flat["qps"] / u_exact["qps"]}))
    hnsw_sizes = sorted({r["size"] for r in _select(rows, system="usearch", kind="HNSW")})
    for size in hnsw_sizes[-1:]:
        for data_kind in sorted({r["data"] for r in rows}):
            here = {"size": size, "data": data_kind, "k": 8}
            u_rows = _select(rows, system="usearch", kind="HNSW", **here)
            if not u_rows:
                continue
            level = min(_TARGET_RECALL, max(r["recall"] for r in u_rows))
            u = _fastest(u_rows, level)
            mine = _fastest(_select(rows, system="hashindex", **here), level)
            targets.append(_target(
                f"hashindex best vs usearch HNSW at recall@8 >= {level:.3f} ({data_kind}), single-query median",
                ">= 1x", here, mine and _ms(u) / _ms(mine), 1.0,
                {**_brief(u, "usearch"), **_brief(mine, "hashindex"),
                 "qps_ratio": mine and mine["qps"] / u["qps"]}))
    return targets


# ---------------------------------------------------------------------------- outputs
def write_outputs(result: dict, out_dir: str | os.PathLike, name: str = "latency") -> dict:
    """``<name>.json``, ``<name>.md`` and the PNG plots under ``out_dir``; returns their paths."""
    from ._io import write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / f"{name}.json"), "markdown": str(out / f"{name}.md")}
    files.update(plot_results(result, out, name))
    result["files"] = files
    write_json_atomic(out / f"{name}.json", json.loads(json.dumps(result, default=_jsonable)))
    (out / f"{name}.md").write_text(markdown_report(result), encoding="utf-8")
    return files


def render_results(json_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                   name: str | None = None) -> dict:
    """Recompute the targets and redraw the table and plots of a saved run (no measuring)."""
    path = Path(json_path)
    result = json.loads(path.read_text(encoding="utf-8"))
    result["targets"] = compute_targets(result)
    result["load_warning"] = _load_warning(result["environment"])
    result["files"] = write_outputs(result, out_dir or path.parent, name or path.stem)
    return result


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _fmt_n(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:g}{unit}"
    return str(n)


def _fmt(x, digits=3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def _mb(n) -> str:
    return "—" if n is None else f"{n / 2**20:,.1f}"


def markdown_report(result: dict) -> str:
    """Targets, a summary per database and the full tables, as markdown."""
    env, cfg = result["environment"], result["config"]
    lines = [f"# hashindex latency benchmark",
             "",
             f"{env['cpu']}, {env['usable_cores']} cores, Faiss {env['versions']['faiss']} "
             f"({env['faiss_threads']} thread{'s' * (env['faiss_threads'] != 1)} for Faiss and usearch), "
             f"numpy {env['versions']['numpy']}, "
             f"usearch {env['versions']['usearch']}, "
             f"Python {env['versions']['python']}; load average at start {env['load_average_at_start']}; "
             + (f"other processes used {env['other_processes_cores']:.2f} cores on average during the run; "
                if env.get("other_processes_cores") is not None else "")
             + f"{env['started_utc']}; run took {result.get('elapsed_s', 0):.0f} s.",
             "",
             "Codes: " + "; ".join(f"**{k}**: {v}" for k, v in result["generators"].items()) + ".",
             f"Queries: {cfg['queries']} fresh codes from the same generator; batch QPS with batches of up to "
             f"{cfg['batch']}; single-query latency over up to {cfg['max_single_queries']} queries; "
             f"time budget {cfg['budget_s']} s per figure. Recall = distance recall@k (see the JSON's `method`).",
             *([f"**Warning:** {result['load_warning']}.", ""] if result.get("load_warning") else []),
             "", "## Targets", "",
             "| target | where | measured | goal | ratio | met |", "|---|---|---|---|---|---|"]
    for t in result.get("targets", []):
        where = ", ".join(f"{k}={_fmt_n(v) if k == 'size' else v}" for k, v in t["where"].items())
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in t["measured"].items()
                 if not isinstance(v, dict)}
        met = "—" if t["met"] is None else ("yes" if t["met"] else f"**no** ({t['missed_by']})")
        note = f" {t['note']}" if t.get("note") else ""
        lines.append(f"| {t['name']} | {where} | {_short(shown)}{note} | {t['goal']} | {_fmt(t['ratio'])} | {met} |")
    rows = [r for r in result["rows"] if r["section"] == "kinds"]
    for size in sorted({r["size"] for r in rows}):
        for data in sorted({r["data"] for r in rows if r["size"] == size}):
            sel = [r for r in rows if r["size"] == size and r["data"] == data]
            lines += ["", f"## {_fmt_n(size)} {data} {sel[0]['bits']}-bit codes", "",
                      "| system | index | k | recall | QPS (batch) | best QPS | median ms | p99 ms | build s "
                      "| memory MiB |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for r in sel:
                lat = r["latency_ms"]
                lines.append(f"| {r['system']} | {r['spec']} | {r['k']} | {r['recall']:.3f} | {_fmt(r['qps'])} "
                             f"(n={r['batch_queries']}) | {_fmt(r.get('best_qps'))} | {lat['median_ms']:.3f} | "
                             f"{lat['p99_ms']:.3f} | "
                             f"{_fmt(r['build_s'])} | {_mb(r['memory_bytes'])} |")
    widths = [r for r in result["rows"] if r["section"] == "widths"]
    if widths:
        lines += ["", "## Code widths: hashindex (zero-padded) vs raw Faiss at the native width, flat, k=8", "",
                  "| size | bits | system | stored bits | QPS (batch) | median ms | p99 ms | recall | memory MiB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in widths:
            lines.append(f"| {_fmt_n(r['size'])} | {r['bits']} | {r['system']} | {r['faiss_bits']} | "
                         f"{_fmt(r['qps'])} | "
                         f"{r['latency_ms']['median_ms']:.3f} | {r['latency_ms']['p99_ms']:.3f} | {r['recall']:.3f} | "
                         f"{_mb(r['memory_bytes'])} |")
    if result.get("rerank"):
        lines += ["", "## Coarse-then-fine rerank", "",
                  "| size | coarse index | search | features | QPS (batch) | median ms | p99 ms |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["rerank"]:
            lines.append(f"| {_fmt_n(r['size'])} {r['data']} | {r['index']} | {r['search']} | {r['feature_dim']}-d "
                         f"{r['feature_dtype']} | {_fmt(r['qps'])} | {r['latency_ms']['median_ms']:.3f} | "
                         f"{r['latency_ms']['p99_ms']:.3f} |")
    if result.get("shards"):
        s = result["shards"]
        lines += ["", "## HDF5 shards -> index", "",
                  f"{_fmt_n(s['size'])} codes in shards of {_fmt_n(s['shard_size'])}: written in {s['write_s']:.1f} s, "
                  f"loaded into a flat HashIndex in {s['load_s']:.2f} s ({s['load_s_per_million']:.3f} s per million; "
                  f"{s['note']})."]
    gpu = result.get("gpu") or {}
    lines += ["", "## GPU", ""]
    if gpu.get("skipped"):
        lines.append(f"Skipped: {gpu['skipped']}.")
    else:
        lines += ["| size | k | QPS (batch) | median ms | p99 ms | recall |", "|---|---|---|---|---|---|"]
        for r in gpu.get("rows", []):
            lines.append(f"| {_fmt_n(r['size'])} | {r['k']} | {_fmt(r['qps'])} | {r['latency_ms']['median_ms']:.3f} | "
                         f"{r['latency_ms']['p99_ms']:.3f} | {r['recall']:.3f} |")
    if result.get("files"):
        lines += ["", "## Plots", ""] + [f"![{k}]({Path(v).name})" for k, v in result["files"].items()
                                          if v.endswith(".png")]
    return "\n".join(lines) + "\n"


def _short(d: dict) -> str:
    return ", ".join(f"{k}={_fmt(v, 4)}" for k, v in d.items())


_STYLE = {("hashindex", "flat"): ("C0", "s"), ("hashindex", "IVF"): ("C1", "o"), ("hashindex", "HNSW"): ("C2", "^"),
          ("hashindex", "MultiHash"): ("C3", "v"), ("hashindex", "auto"): ("C4", "*"),
          ("numpy", "exact"): ("C5", "X"), ("usearch", "exact"): ("C6", "P"), ("usearch", "HNSW"): ("C7", "D")}


def plot_results(result: dict, out_dir: Path, name: str) -> dict:
    """QPS vs recall per index kind, latency vs database size (log-log), padding bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    files = {}
    rows = [r for r in result["rows"] if r["section"] == "kinds" and r["k"] == 8]
    sizes = sorted({r["size"] for r in rows})
    datas = sorted({r["data"] for r in rows})
    if rows:
        fig = Figure(figsize=(5.5 * len(sizes), 4.2 * len(datas)))
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(datas), len(sizes), squeeze=False)
        for i, data in enumerate(datas):
            for j, size in enumerate(sizes):
                ax = axes[i][j]
                for (system, kind), (color, marker) in _STYLE.items():
                    sel = [r for r in rows if r["data"] == data and r["size"] == size and r["system"] == system
                           and r["kind"] == kind]
                    if sel:
                        ax.plot([r["recall"] for r in sel], [r["qps"] for r in sel], marker=marker, color=color,
                                label=f"{system} {kind}", linestyle="-" if len(sel) > 1 else "none")
                raw = [r for r in rows if r["data"] == data and r["size"] == size and r["system"] == "faiss"
                       and r["kind"] in ("IVF",)]
                if raw:
                    ax.plot([r["recall"] for r in raw], [r["qps"] for r in raw], color="C1", linestyle=":",
                            alpha=0.6, label="raw Faiss IVF")
                ax.set_yscale("log")
                ax.set_xlabel("distance recall@8")
                ax.set_ylabel("queries / s (batch)")
                ax.set_title(f"{_fmt_n(size)} {data} {rows[0]['bits']}-bit codes")
                ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        path = out_dir / f"{name}_qps_recall.png"
        fig.savefig(path, dpi=110)
        files["qps_vs_recall"] = str(path)

        fig = Figure(figsize=(5.5 * len(datas), 4.2))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(datas), squeeze=False)[0]
        for ax, data in zip(axes, datas):
            series = {"hashindex flat": ("hashindex", "flat"), "raw Faiss flat": ("faiss", "flat"),
                      "numpy": ("numpy", "exact"), "usearch exact": ("usearch", "exact")}
            for label, (system, kind) in series.items():
                pts = sorted((r["size"], r["latency_ms"]["median_ms"]) for r in rows
                             if r["data"] == data and r["system"] == system and r["kind"] == kind)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=label)
            best = []
            for size in sizes:
                b = _fastest([r for r in rows if r["data"] == data and r["size"] == size and r["system"] == "hashindex"
                              and r["kind"] != "flat"], _TARGET_RECALL)
                if b:
                    best.append((size, b["latency_ms"]["median_ms"]))
            if best:
                ax.plot(*zip(*best), marker="*", label="hashindex best approx. (recall@8 >= 0.95)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("database size (codes)")
            ax.set_ylabel("single-query median latency (ms)")
            ax.set_title(f"{data} codes, k=8")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{name}_latency_vs_size.png"
        fig.savefig(path, dpi=110)
        files["latency_vs_size"] = str(path)

    widths = [r for r in result["rows"] if r["section"] == "widths"]
    if widths:
        size = max(r["size"] for r in widths)
        sel = [r for r in widths if r["size"] == size]
        bits = sorted({r["bits"] for r in sel})
        fig = Figure(figsize=(6, 3.8))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        x = np.arange(len(bits))
        for offset, (system, label) in ((-0.2, ("faiss", "raw Faiss, native width")),
                                        (0.2, ("hashindex", "hashindex (zero-padded)"))):
            qps = [next(r["qps"] for r in sel if r["bits"] == b and r["system"] == system) for b in bits]
            ax.bar(x + offset, qps, width=0.4, label=label)
        ax.set_xticks(x, [str(b) for b in bits])
        ax.set_xlabel("code bits")
        ax.set_ylabel("queries / s (batch, k=8)")
        ax.set_title(f"flat search, {_fmt_n(size)} uniform codes")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{name}_widths.png"
        fig.savefig(path, dpi=110)
        files["widths"] = str(path)
    return files


# ---------------------------------------------------------------------------- CLI
def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(float(t)) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated numbers like 1e6,1e7, got {text!r}") from exc


@click.command("bench")
@click.option("--sizes", default="1e6,1e7", show_default=True, help="database sizes (codes), e.g. 1e6,1e7,1e8")
@click.option("--bits", default=64, show_default=True, help="code width of the index-kind grid")
@click.option("--widths", default="32,48,64,80,96,128", show_default=True,
              help="code widths of the padding measurement (flat); empty to skip")
@click.option("--data", default="uniform,clustered", show_default=True, help="synthetic code kinds")
@click.option("--ks", default="8,1000", show_default=True, help="k values")
@click.option("--queries", default=1000, show_default=True, help="query codes (and the largest batch)")
@click.option("--budget", default=0.3, show_default=True, help="seconds per timed figure")
@click.option("--hnsw-max-size", default="1e6", show_default=True, help="largest size HNSW indexes are built for")
@click.option("--hnsw-data", default="clustered", show_default=True,
              help="code kinds HNSW indexes are built for (uniform codes make HNSW builds very slow)")
@click.option("--feature-dim", default=128, show_default=True, help="feature width of the rerank measurement")
@click.option("--usearch/--no-usearch", default=True, show_default=True)
@click.option("--rerank/--no-rerank", default=True, show_default=True)
@click.option("--shards/--no-shards", default=True, show_default=True)
@click.option("--threads", type=int, default=None, help="Faiss threads (default: every core)")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default="benchmarks/results", show_default=True, type=click.Path(file_okay=False),
              help="directory for <name>.json, <name>.md and the PNG plots")
@click.option("--name", default="latency", show_default=True, help="file name stem")
@click.option("--from-json", "from_json", type=click.Path(exists=True, dir_okay=False), default=None,
              help="measure nothing: recompute targets, table and plots of this saved run (into --out)")
def bench_command(sizes, bits, widths, data, ks, queries, budget, hnsw_max_size, hnsw_data, feature_dim, usearch,
                  rerank, shards, threads, seed, out, name, from_json):
    """Latency benchmark: index kinds vs raw Faiss, numpy and usearch, with recall, ratios and plots."""
    if from_json:
        result = render_results(from_json, out, name)
    else:
        cfg = BenchConfig(sizes=_int_list(sizes), bits=bits, widths=_int_list(widths), data=tuple(data.split(",")),
                          ks=_int_list(ks), batch=queries, queries=queries, budget_s=budget,
                          hnsw_max_size=_int_list(hnsw_max_size)[0], hnsw_data=tuple(hnsw_data.split(",")),
                          feature_dim=feature_dim, usearch=usearch, rerank=rerank, shards=shards, seed=seed)
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads or previous)
        try:
            result = run_latency_benchmark(cfg, out_dir=out, name=name, log=lambda m: click.echo(m, err=True))
        finally:
            faiss.omp_set_num_threads(previous)
    for t in result["targets"]:
        status = "—" if t["met"] is None else ("met" if t["met"] else f"MISSED ({t['missed_by']})")
        click.echo(f"{t['name']}: ratio {_fmt(t['ratio'])} [{t['goal']}] {status}")
    click.echo(f"wrote {', '.join(result['files'].values())}")
