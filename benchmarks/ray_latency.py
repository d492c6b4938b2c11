"""Latency and throughput of ShardedHashIndex on Ray (1, 2, 4 actors) vs one in-process HashIndex.

Two measurements, one JSON (``benchmarks/results/ray_latency.json`` by default):

- ``search``: flat Hamming kNN (k=8) over ``--codes`` uniform 64-bit codes, written as
  8 shards, for each query batch size: the in-process index (1 Faiss thread; more with
  ``--single-threads``) and Ray with 1, 2, 4 actors (1 Faiss thread each). Every result
  is checked equal to the in-process one before it is timed.
- ``overhead``: the same calls over a 10k-code store, where search time is negligible, so
  the Ray latency minus the in-process latency is the per-call cost of the fan-out
  (object-store put, one actor call per group, gather, merge).

All systems are alive at once and timed alternately, in a shuffled order each round, until
each has run ``--min-time`` seconds; medians are reported. Ratios are only meaningful
within one run. Uses a local Ray instance (127.0.0.1, ``--cpus`` CPUs).

    python benchmarks/ray_latency.py                      # 10M codes, a few minutes on 2 cores
    python benchmarks/ray_latency.py --codes 1000000 --batch-sizes 1 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from hashindex import HashIndex, ShardWriter
from hashindex.datasets import synthetic_codes
from hashindex.timing import alternate, environment

RESULTS = Path(__file__).resolve().parent / "results"


def timed_alternating(fns: dict, min_time: float, min_repeats: int = 3) -> dict[str, dict]:
    """Median / best / p90 wall time of each ``fn()``, the systems called in turn (in a shuffled
    order each round) until each has run ``min_time`` seconds: load from other processes then
    hits every system alike, so their ratios hold even on a busy machine."""
    times = alternate({name: (lambda i, fn=fn: fn()) for name, fn in fns.items()}, min_repeats=min_repeats,
                      min_time_s=min_time, order="shuffle")
    out = {}
    for name, t in times.items():
        t.sort()
        out[name] = {"median_s": statistics.median(t), "best_s": t[0],
                     "p90_s": t[min(len(t) - 1, int(0.9 * len(t)))], "repeats": len(t)}
    return out


def write_store(directory: Path, n: int, bits: int, shards: int, seed: int) -> np.ndarray:
    data = synthetic_codes(n, 4096, bits, kind="uniform", seed=seed)
    with ShardWriter(directory, bits, shard_size=-(-n // shards)) as writer:
        for start in range(0, n, 1 << 20):
            writer.add(data.database[start : start + (1 << 20)])
    return data.queries


def measure(directory: Path, queries: np.ndarray, batch_sizes, actor_counts, k: int, min_time: float,
            single_threads) -> list[dict]:
    """Time the in-process index (each thread count) and a ShardedHashIndex per actor count,
    all alive at once (actors reserve a quarter CPU each so all fit) and timed alternately."""
    from hashindex.distributed import ShardedHashIndex

    single = HashIndex.from_shards(directory, progress=False)
    sharded = {a: ShardedHashIndex.from_shards(directory, num_actors=a, cpus_per_actor=0.25, threads=1)
               for a in actor_counts}
    rows = []
    try:
        for nq in batch_sizes:
            q = queries[:nq]
            D_ref, I_ref = single.search(q, k)
            fns = {}
            for threads in single_threads:
                fns[("single process", 0, threads)] = (
                    lambda t=threads: (faiss.omp_set_num_threads(t), single.search(q, k)))
            for actors, index in sharded.items():
                D, I = index.search(q, k)
                assert np.array_equal(D, D_ref) and np.array_equal(I, I_ref), f"{actors} actors differ"
                fns[("ray", actors, 1)] = lambda index=index: index.search(q, k)
            for (mode, actors, threads), t in timed_alternating(fns, min_time).items():
                rows.append({"mode": mode, "actors": actors, "threads": threads, "batch": nq, **t,
                             "queries_per_s": nq / t["median_s"], "equal_to_single": True})
                print(f"{mode:14s} actors={actors} threads={threads} batch={nq:5d}: "
                      f"{1e3 * t['median_s']:9.2f} ms median ({t['repeats']} calls)")
    finally:
        for index in sharded.values():
            index.shutdown()
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--codes", type=int, default=10_000_000)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 256])
    parser.add_argument("--overhead-codes", type=int, default=10_000)
    parser.add_argument("--min-time", type=float, default=2.0, help="Seconds each timing repeats for.")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance.")
    parser.add_argument("--single-threads", type=int, nargs="+", default=[1],
                        help="Faiss thread counts of the in-process index.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="Where to write the shard stores (temp dir).")
    parser.add_argument("--out", type=Path, default=RESULTS / "ray_latency.json")
    args = parser.parse_args(argv)

    from hashindex.cluster import connect

    connect(num_cpus=args.cpus)
    result = {"benchmark": "ray_latency", "args": {k: str(v) if isinstance(v, Path) else v
                                                   for k, v in vars(args).items()},
              "environment": environment()}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        queries = write_store(tmp / "big", args.codes, args.bits, shards=8, seed=args.seed)
        result["store_write_s"] = time.perf_counter() - t0
        print(f"wrote {args.codes} codes in {result['store_write_s']:.1f} s")
        result["search"] = measure(tmp / "big", queries, args.batch_sizes, args.actors, args.k, args.min_time,
                                   args.single_threads)
        small_queries = write_store(tmp / "small", args.overhead_codes, args.bits, shards=8, seed=args.seed + 1)
        result["overhead"] = measure(tmp / "small", small_queries, args.batch_sizes, args.actors, args.k,
                                     args.min_time, args.single_threads)
    result["summary"] = summarise(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {args.out}")
    return result


def summarise(result: dict) -> dict:
    """Per-call Ray overhead (small store) and Ray / single-process throughput ratios (big store)."""
    def lookup(rows, mode, actors, threads, batch):
        for r in rows:
            if (r["mode"], r["actors"], r["threads"], r["batch"]) == (mode, actors, threads, batch):
                return r

    out = {"overhead_ms_per_call": {}, "throughput_ratio_vs_single_1_thread": {}}
    for r in result["overhead"]:
        if r["mode"] == "ray":
            base = lookup(result["overhead"], "single process", 0, 1, r["batch"])
            key = f"{r['actors']} actors, batch {r['batch']}"
            out["overhead_ms_per_call"][key] = round(1e3 * (r["median_s"] - base["median_s"]), 3)
    for r in result["search"]:
        if r["mode"] == "ray":
            base = lookup(result["search"], "single process", 0, 1, r["batch"])
            key = f"{r['actors']} actors, batch {r['batch']}"
            out["throughput_ratio_vs_single_1_thread"][key] = round(r["queries_per_s"] / base["queries_per_s"], 3)
    return out


if __name__ == "__main__":
    main()
