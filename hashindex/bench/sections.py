"""The benchmark's sections: index kinds, code widths, rerank, shard loading, GPU."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

from ..autotune import choose_nlist
from ..datasets import synthetic_codes
from ..index import HashIndex
from ..spec import KINDS, parse_spec
from ..store import ShardWriter
from ..timing import time_single, timed
from .harness import (TARGET_RECALL, WIDTH_QUERIES, BenchConfig, NumpyHamming, SearchFn, distance_recall,
                      faiss_threads, time_batch, usearch_exact, usearch_hnsw, usearch_ids)
from .targets import fastest_row, select_rows, target_data

# ---------------------------------------------------------------------------- per-section context
@dataclass
class Context:
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


def _measure(ctx: Context, fns: dict[str, SearchFn], ks: tuple[int, ...] | None = None) -> dict[str, dict]:
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


def hashindex_bytes(index: HashIndex) -> int:
    extra = index.labels.nbytes + index.ids.nbytes
    if index.features is not None:
        extra += index.features.nbytes
    return _faiss_bytes(index.faiss_index) + int(extra)


# ---------------------------------------------------------------------------- sections
def bench_kinds(ctx: Context, log, features: np.ndarray | None = None) -> tuple[list[dict], dict]:
    """Flat, IVF, HNSW, MultiHash, auto, numpy and usearch on one (size, data) database.
    Returns the rows and the IVF HashIndex (for the rerank section)."""
    cfg = ctx.cfg
    rows: list[dict] = []

    def add_rows(system, kind, spec, build_s, memory, measured, **extra):
        for k, figures in measured.items():
            rows.append(ctx.row(system, kind, spec, build_s, memory, k, figures, **extra))

    _bench_exact(ctx, add_rows, log)
    ivf = _bench_ivf(ctx, add_rows, log, features)
    if ctx.size <= cfg.hnsw_max_size and ctx.data.startswith(cfg.hnsw_data):
        _bench_hnsw(ctx, add_rows, log)
    if cfg.ivf_hnsw_lists and ctx.data == target_data(cfg):
        _bench_ivf(ctx, add_rows, log, None, quantiser_m=cfg.hnsw_m * 2, lists_factor=cfg.ivf_hnsw_lists)
    _bench_multihash(ctx, add_rows, log)
    auto = HashIndex(ctx.bits, f"auto,recall={cfg.auto_recall:g}")
    _, build = timed(lambda: auto.add(ctx.database))
    log(f"  auto,recall={cfg.auto_recall:g} -> {auto.spec} in {build:.1f} s (tuning included)")
    # auto is timed in alternation with the fastest raw Faiss IVF reaching the same recall, so
    # that the target compares two figures of one measurement.
    fns = {"hashindex": _hashindex_fn(auto)}
    hand = fastest_row(select_rows(rows, system="faiss", kind="IVF", k=min(ctx.ks)), cfg.auto_recall)
    if hand is not None:
        ivf.set_search_params(**parse_spec(hand["spec"]).params)
        fns["faiss"] = _faiss_fn(ivf.faiss_index)
    m = _measure(ctx, fns)
    for k, figures in m["hashindex"].items():
        paired = None if hand is None else {"spec": hand["spec"], **m["faiss"][k]}
        rows.append(ctx.row("hashindex", "auto", str(auto.spec), build, hashindex_bytes(auto), k, figures,
                            auto=auto.metadata.get("auto"), paired_faiss=paired))
    return rows, {"ivf": ivf}


def _bench_exact(ctx: Context, add_rows, log) -> None:
    """hashindex flat, a separately built raw Faiss flat (also the ground truth), numpy, usearch exact."""
    cfg, db = ctx.cfg, ctx.database
    hi, hi_build = timed(lambda: _filled(HashIndex(ctx.bits, "flat"), db))
    raw, raw_build = timed(lambda: _faiss_flat(db, ctx.bits))
    (gt_D, _), gt_s = timed(lambda: raw.search(ctx.queries, max(cfg.ks)))
    ctx.kth = {k: gt_D[:, k - 1] for k in cfg.ks}
    log(f"  flat built ({hi_build:.2f} s hashindex, {raw_build:.2f} s Faiss); ground truth in {gt_s:.1f} s")
    m = _measure(ctx, {"hashindex": _hashindex_fn(hi), "faiss": _faiss_fn(raw)})
    add_rows("hashindex", "flat", "flat", hi_build, hashindex_bytes(hi), m["hashindex"])
    add_rows("faiss", "flat", "IndexBinaryFlat", raw_build, _faiss_bytes(raw), m["faiss"])
    if cfg.numpy:
        npy, build = timed(lambda: NumpyHamming(db))
        add_rows("numpy", "exact", "XOR + np.bitwise_count", build, int(db.nbytes),
                 _measure(ctx, {"numpy": npy.search})["numpy"])
    if cfg.usearch:
        add_rows("usearch", "exact", "search(exact=True)", 0.0, int(db.nbytes),
                 _measure(ctx, {"usearch": usearch_exact(db)})["usearch"])
    log("  exact baselines done")


def _bench_ivf(ctx: Context, add_rows, log, features: np.ndarray | None, quantiser_m: int = 0,
               lists_factor: int = 1) -> HashIndex:
    """IVF with nlist ~ ``lists_factor`` * sqrt(n), trained on ``train_per_list`` codes per list,
    over a flat quantiser or (``quantiser_m`` > 0) an HNSW one with that M; nprobe sweep."""
    cfg, db = ctx.cfg, ctx.database
    nlist = choose_nlist(ctx.size, lists_factor)
    ivf = HashIndex(ctx.bits, f"IVF{nlist}_HNSW{quantiser_m}" if quantiser_m else f"IVF{nlist}")
    rng = np.random.default_rng(cfg.seed)
    train_rows = np.sort(rng.choice(ctx.size, size=min(ctx.size, cfg.train_per_list * nlist), replace=False))
    _, train_s = timed(lambda: ivf.train(db[train_rows]))
    _, add_s = timed(lambda: ivf.add(db, features=features))
    memory = hashindex_bytes(ivf) - (0 if features is None else features.nbytes)
    log(f"  {ivf.spec}: trained in {train_s:.1f} s on {len(train_rows)} codes, filled in {add_s:.1f} s")
    _sweep(ctx, add_rows, ivf, [p for p in cfg.nprobes if p <= nlist], train_s + add_s, memory,
           train_s=train_s)
    return ivf


def _sweep(ctx: Context, add_rows, index: HashIndex, values, build_s: float, memory: int, **extra) -> None:
    """At each value of the kind's search parameter (from its :data:`~hashindex.spec.KINDS` record):
    ``index`` and the raw Faiss index inside it, timed in alternation, one row each."""
    kind = index.spec.kind
    param = KINDS[kind].params[0]
    for value in values:
        index.set_search_params(**{param: value})
        m = _measure(ctx, {"hashindex": _hashindex_fn(index), "faiss": _faiss_fn(index.faiss_index)})
        add_rows("hashindex", kind, str(index.spec), build_s, memory, m["hashindex"], **extra)
        add_rows("faiss", kind, str(index.spec), None, _faiss_bytes(index.faiss_index), m["faiss"])


def _bench_hnsw(ctx: Context, add_rows, log) -> None:
    """Faiss HNSW (through hashindex) and usearch HNSW with the same M and construction depth."""
    cfg, db = ctx.cfg, ctx.database
    hnsw = HashIndex(ctx.bits, f"HNSW{cfg.hnsw_m}")
    hnsw.faiss_index.hnsw.efConstruction = cfg.hnsw_ef_construction
    _, build = timed(lambda: hnsw.add(db))
    memory = hashindex_bytes(hnsw)
    log(f"  HNSW{cfg.hnsw_m}: built in {build:.1f} s")
    _sweep(ctx, add_rows, hnsw, cfg.ef_searches, build, memory)
    del hnsw
    if not cfg.usearch:
        return
    uidx, build = timed(lambda: usearch_hnsw(db, ctx.bits, cfg.hnsw_m, cfg.hnsw_ef_construction))
    log(f"  usearch HNSW M={cfg.hnsw_m}: built in {build:.1f} s")
    for ef in cfg.ef_searches:
        uidx.expansion_search = ef
        m = _measure(ctx, {"usearch": lambda q, k: usearch_ids(uidx.search(q, k, threads=faiss_threads()), len(q), k)})
        add_rows("usearch", "HNSW", f"HNSW M={cfg.hnsw_m} efC={cfg.hnsw_ef_construction} ef={ef}", build,
                 int(uidx.memory_usage), m["usearch"])


def _bench_multihash(ctx: Context, add_rows, log) -> None:
    """MultiHash with as many ``multihash_bits``-bit tables as the code holds; nflip sweep."""
    cfg = ctx.cfg
    nhash = max(1, ctx.bits // cfg.multihash_bits)
    mh = HashIndex(ctx.bits, f"MultiHash{nhash}x{cfg.multihash_bits}")
    _, build = timed(lambda: mh.add(ctx.database))
    memory = hashindex_bytes(mh)
    log(f"  MultiHash{nhash}x{cfg.multihash_bits}: built in {build:.1f} s")
    _sweep(ctx, add_rows, mh, cfg.nflips, build, memory)


def _filled(index: HashIndex, db: np.ndarray, **kwargs) -> HashIndex:
    index.add(db, **kwargs)
    return index


def _faiss_flat(db: np.ndarray, bits: int) -> faiss.IndexBinaryFlat:
    index = faiss.IndexBinaryFlat(bits)
    index.add(db)
    return index


def bench_widths(cfg: BenchConfig, size: int, log) -> list[dict]:
    """Flat search per code width: hashindex (zero-padded to a fast width when that applies)
    against raw Faiss at the native width, k = 8."""
    rows = []
    n_queries = min(cfg.queries, WIDTH_QUERIES)
    for bits in cfg.widths:
        codes = synthetic_codes(size, n_queries, bits, "uniform", seed=cfg.seed)
        ctx = Context(cfg, size, "uniform", bits, codes.database, codes.queries, ks=(8,))
        hi, hi_build = timed(lambda: _filled(HashIndex(bits, "flat"), codes.database))
        raw, raw_build = timed(lambda: _faiss_flat(codes.database, bits))
        # Ground truth from the padded index (the fast one); the unpadded raw Faiss results are
        # checked against it, so a padding error would show as recall < 1 on one of the two.
        ctx.kth = {8: hi.search(codes.queries, 8)[0][:, 7]}
        m = _measure(ctx, {"hashindex": _hashindex_fn(hi), "faiss": _faiss_fn(raw)})
        rows.append(ctx.row("hashindex", "flat", "flat", hi_build, hashindex_bytes(hi), 8, m["hashindex"][8],
                            section="widths", faiss_bits=hi.faiss_bits))
        rows.append(ctx.row("faiss", "flat", "IndexBinaryFlat", raw_build, _faiss_bytes(raw), 8, m["faiss"][8],
                            section="widths", faiss_bits=bits))
        ratio = m["hashindex"][8]["qps"] / m["faiss"][8]["qps"]
        log(f"  {bits}-bit flat at {size:,}: hashindex stores {hi.faiss_bits} bits, {ratio:.2f}x raw Faiss QPS")
        del hi, raw, codes
    return rows


def synthetic_features(n: int, dim: int, seed: int) -> np.ndarray:
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


def bench_rerank(ctx: Context, features: np.ndarray, ivf: HashIndex | None, ivf_rows: list[dict], log) -> list[dict]:
    """``search_rerank`` (k = 8 from ``candidates`` Hamming candidates) against Hamming-only search."""
    cfg = ctx.cfg
    flat, build = timed(lambda: _filled(HashIndex(ctx.bits, "flat"), ctx.database, features=features))
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
                and r["k"] == max(ctx.ks) and r["recall"] >= TARGET_RECALL]
        if good and max(ctx.ks) >= cfg.candidates:
            best = min(good, key=lambda r: r["latency_ms"]["median_ms"])
            ivf.set_search_params(**parse_spec(best["spec"]).params)
            timed_rows(ivf, str(ivf.spec), best["build_s"], best["recall"])
    return rows


def bench_shards(cfg: BenchConfig, database: np.ndarray, bits: int, log) -> dict:
    """Write ``database`` as HDF5 shards (codes + labels), then time ``HashIndex.from_shards``."""
    n = len(database)
    labels = np.arange(n, dtype=np.int64) % 100
    with tempfile.TemporaryDirectory(prefix="hashindex-bench-") as tmp:
        def write():
            with ShardWriter(Path(tmp) / "store", bits, shard_size=cfg.shard_size) as writer:
                writer.add(database, labels=labels)

        _, write_s = timed(write)
        loads = []
        for _ in range(2):
            index, load_s = timed(lambda: HashIndex.from_shards(Path(tmp) / "store", "flat", progress=False))
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


def bench_gpu(cfg: BenchConfig, log) -> dict:
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
        ctx = Context(cfg, size, "uniform", cfg.bits, codes.database, codes.queries,
                       ks=tuple(k for k in cfg.ks if k <= 2048))
        gpu, build = timed(lambda: _filled_gpu(resources, codes.database, cfg.bits))
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
