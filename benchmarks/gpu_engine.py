"""GPU engine benchmark: the torch engine beside raw Faiss GPU and CPU Faiss, with an exactness check.

    python benchmarks/gpu_engine.py OUT.json                              # GPU: 1M, 10M, 100M codes
    python benchmarks/gpu_engine.py OUT.json --sizes 1e4 --device cpu     # anywhere, tiny

For each database size and each ``k``: median ms per call of 1 / 16 / 256 / 4,096 queries for
``torch`` (:class:`hashtorch.TorchEngine`), ``faiss-gpu`` (raw ``GpuIndexBinaryFlat``), ``faiss-cpu``
(raw ``IndexBinaryFlat``, all threads), ``hashindex-faiss-gpu`` (hashindex's Faiss GPU path, ties
ordered by row) and ``routed`` (a :class:`hashindex.routing.Router` over torch / Faiss GPU / Faiss
CPU, calibrated first); ratios to the torch engine and raw / hashindex Faiss GPU; and, on
``--check`` queries per ``k``, whether each engine's distances (and ids, ties in row order) equal
CPU flat search. An engine slower than ``--max-call-s`` for one batch size is not timed at larger
ones (the JSON marks them skipped). Codes are
clustered (1,000 centres, p = 0.1) up to ``--clustered-up-to`` codes, uniform beyond. The JSON is
rewritten after every measurement, so an interrupted run keeps what it measured; the plot
(``OUT.png``: ms per call vs queries per call) is drawn from the JSON at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from hashindex.durable import write_json_atomic
from hashindex.datasets import synthetic_codes
from hashindex.engines import FaissCpuEngine, FaissGpuEngine
from hashindex.gpu import gpu_max_k, gpu_unavailable_reason
from hashindex.routing import Router
from hashindex.timing import alternate, environment
from hashtorch import TorchEngine

ENGINES = ("torch", "faiss-gpu", "faiss-cpu", "routed", "hashindex-faiss-gpu")


class RawFaiss:
    """A raw Faiss index (CPU or GPU) searched through its plain Python wrapper, as users call it."""

    def __init__(self, index, max_k: int | None = None) -> None:
        self.index, self.max_k = index, max_k

    def search(self, queries: np.ndarray, k: int):
        if self.max_k is not None and k > self.max_k:
            raise ValueError(f"k={k} exceeds Faiss's GPU k-selection limit of {self.max_k}")
        return self.index.search(queries, k)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="JSON file to write (the plot goes beside it, .png)")
    p.add_argument("--sizes", default="1e6,1e7,1e8", help="database sizes, comma-separated")
    p.add_argument("--queries", default="1,16,256,4096", help="queries per call, comma-separated")
    p.add_argument("--ks", default="8,1000", help="k values, comma-separated")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--device", default="cuda", help="torch device of the torch engine (cuda or cpu)")
    p.add_argument("--memory-budget", type=int, default=None, help="torch engine working bytes (default: its own)")
    p.add_argument("--max-call-s", type=float, default=2.0, help="skip larger batches once a call takes this long")
    p.add_argument("--min-time-s", type=float, default=0.3, help="repeat each measurement for at least this long")
    p.add_argument("--check", type=int, default=64, help="queries whose results are compared with CPU flat")
    p.add_argument("--clustered-up-to", type=float, default=3e7, help="larger databases are uniform codes")
    p.add_argument("--replot", action="store_true", help="only draw the plot of an existing OUT.json")
    return p.parse_args(argv)


def _ints(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",") if v.strip()]


def per_call(fn, max_call_s: float, min_time_s: float, max_calls: int = 20) -> dict:
    """Median ms per call after one warm-up call; a warm-up slower than ``max_call_s`` is the result."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    if first > max_call_s:
        return {"median_ms": first * 1e3, "calls": 1, "includes_warmup": True}
    times = alternate({"call": lambda _: fn()}, min_repeats=3, max_repeats=max_calls, min_time_s=min_time_s)["call"]
    return {"median_ms": float(np.median(times)) * 1e3, "calls": len(times), "includes_warmup": False}


def gpu_environment(args: argparse.Namespace) -> dict:
    extra = {"faiss_gpu": gpu_unavailable_reason() or "available", "torch_device": args.device}
    if torch.device(args.device).type == "cuda":
        extra["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    return environment(**extra)


def build_engines(db: np.ndarray, args: argparse.Namespace) -> tuple[dict, dict, TorchEngine, Router]:
    """The measured engines (name -> object with ``search``), their build seconds, the torch engine, the router."""
    built, seconds = {}, {}
    start = time.perf_counter()
    cpu = faiss.IndexBinaryFlat(args.bits)
    cpu.add(db)
    built["faiss-cpu"], seconds["faiss-cpu"] = RawFaiss(cpu), time.perf_counter() - start
    routed = {"faiss-cpu": FaissCpuEngine.over(cpu)}
    if gpu_unavailable_reason() is None:
        start = time.perf_counter()
        gpu = faiss.GpuIndexBinaryFlat(faiss.StandardGpuResources(), args.bits)
        gpu.add(db)
        built["faiss-gpu"], seconds["faiss-gpu"] = RawFaiss(gpu, gpu_max_k()), time.perf_counter() - start
        # hashindex's own Faiss GPU path: batches, k limit, ties put in row order after the search.
        built["hashindex-faiss-gpu"] = routed["faiss-gpu"] = FaissGpuEngine.over(cpu)
    start = time.perf_counter()
    engine = TorchEngine(device=args.device, memory_budget=args.memory_budget)
    engine.fit(db)
    if engine.torch_device.type == "cuda":
        torch.cuda.synchronize(engine.torch_device)
    built["torch"], seconds["torch"] = engine, time.perf_counter() - start
    routed["torch"] = engine
    router = Router(routed)
    router.attach(len(db), lambda lo, hi: db[lo:hi])
    built["routed"] = router
    return built, seconds, engine, router


def exactness(built: dict, queries: np.ndarray, k: int) -> dict:
    """Each engine's results on ``queries`` against CPU flat: distances equal, ids equal (ties by row)."""
    D_ref, I_ref = built["faiss-cpu"].search(queries, k)
    out = {}
    for name, engine in built.items():
        if name == "faiss-cpu":
            continue
        try:
            D, I = engine.search(queries, k)
        except ValueError as exc:
            out[name] = {"skipped": str(exc)}
            continue
        out[name] = {"distances_equal": bool(np.array_equal(D, D_ref)), "ids_equal": bool(np.array_equal(I, I_ref))}
    return out


def run(args: argparse.Namespace) -> dict:
    sizes, batch_sizes, ks = _ints(args.sizes), _ints(args.queries), _ints(args.ks)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "environment": gpu_environment(args), "sizes": []}
    save = lambda: write_json_atomic(args.out, result)  # noqa: E731 - an interrupted run keeps a whole file
    for size in sizes:
        kind = "clustered" if size <= args.clustered_up_to else "uniform"
        start = time.perf_counter()
        codes = synthetic_codes(size, max(batch_sizes + [args.check]), args.bits, kind, n_clusters=1000, seed=1)
        db, queries = codes.database, codes.queries
        entry = {"ntotal": size, "codes": codes.generator, "generate_s": time.perf_counter() - start,
                 "exact": {}, "ms_per_call": {}, "ratios": {}}
        result["sizes"].append(entry)
        built, entry["build_s"], engine, router = build_engines(db, args)
        entry["routing"] = router.calibrate(min(ks))
        entry["torch_kernel"] = engine.kernel  # "triton" unless the fused kernel could not run
        save()
        for k in ks:
            entry["exact"][str(k)] = exactness(built, queries[: args.check], k)
            save()
            timings = entry["ms_per_call"][str(k)] = {}
            for name, searcher in built.items():
                timings[name] = {}
                too_slow = None
                for nq in batch_sizes:
                    if too_slow is not None:
                        timings[name][str(nq)] = {"skipped": too_slow}
                        continue
                    timings[name][str(nq)] = measured = _measure(searcher, queries[:nq], k, args)
                    if name == "torch" and engine.last_plan is not None:
                        measured["plan"] = vars(engine.last_plan)
                    save()
                    too_slow = measured.get("skipped")
                    if measured.get("median_ms", 0) > args.max_call_s * 1e3:
                        too_slow = f"{nq} queries took {measured['median_ms']:.0f} ms > --max-call-s"
            entry["ratios"][str(k)] = ratios(timings)
            save()
        if engine.torch_device.type == "cuda":
            entry["torch_peak_bytes"] = int(torch.cuda.max_memory_allocated(engine.torch_device))
            entry["torch_resident_bytes"] = int(engine._words.numel() * 8)
            entry["torch_budget_bytes"] = engine.memory_budget
            entry["torch_working_within_budget"] = (entry["torch_peak_bytes"] - entry["torch_resident_bytes"]
                                                    <= engine.memory_budget)
        del built, engine, router
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        save()
    result["plot"] = plot(result, args.out.with_suffix(".png"))
    save()
    return result


def _measure(searcher, queries: np.ndarray, k: int, args: argparse.Namespace) -> dict:
    try:
        return per_call(lambda: searcher.search(queries, k), args.max_call_s, args.min_time_s)
    except ValueError as exc:  # Faiss GPU's k limit
        return {"skipped": str(exc)}


def ratios(timings: dict) -> dict:
    """Per batch size: each engine's ms over the torch engine's (above 1: torch is faster), and raw
    Faiss GPU's ms over hashindex's Faiss GPU path (below 1: ordering ties costs that much)."""
    out: dict = {}

    def ratio(slower: str, faster: str, nq: str) -> None:
        a = timings.get(slower, {}).get(nq, {}).get("median_ms")
        b = timings.get(faster, {}).get(nq, {}).get("median_ms")
        if a and b:
            out.setdefault(nq, {})[f"{slower}_over_{faster}"] = round(a / b, 3)

    for nq in timings.get("torch", {}):
        for name in ENGINES[1:]:
            ratio(name, "torch", nq)
        ratio("faiss-gpu", "hashindex-faiss-gpu", nq)
    return out


def plot(result: dict, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = result["sizes"]
    ks = sorted({k for entry in sizes for k in entry["ms_per_call"]}, key=int)
    fig, axes = plt.subplots(len(sizes), len(ks), figsize=(5 * len(ks), 3.6 * len(sizes)), squeeze=False)
    for row, entry in enumerate(sizes):
        for col, k in enumerate(ks):
            ax = axes[row][col]
            for name, per_nq in entry["ms_per_call"].get(k, {}).items():
                points = [(int(nq), t["median_ms"]) for nq, t in per_nq.items() if "median_ms" in t]
                if points:
                    ax.plot(*zip(*points), marker="o", label=name)
            ax.set(xscale="log", yscale="log", xlabel="queries per call", ylabel="ms per call",
                   title=f"{entry['ntotal']:,} codes, k={k}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"{result['environment'].get('gpu', result['environment']['torch_device'])}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.replot:  # e.g. after a run stopped by its time limit
        result = json.loads(args.out.read_text())
        result["plot"] = plot(result, args.out.with_suffix(".png"))
        write_json_atomic(args.out, result)
    else:
        run(args)


if __name__ == "__main__":
    main()
