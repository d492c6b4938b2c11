"""One latency benchmark run: every section, the environment, the targets, the output files."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Callable

from ..datasets import benchmark_codes
from ..timing import environment, timed
from .harness import BenchConfig
from .report import METHOD, write_outputs
from .sections import Context, bench_gpu, bench_kinds, bench_rerank, bench_shards, bench_widths, synthetic_features
from .targets import compute_targets, load_warning

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
                    "method": METHOD, "generators": {}, "rows": [], "rerank": [], "shards": None, "gpu": None}
    largest = cfg.sizes[-1]
    for size in cfg.sizes:
        for data in cfg.data:
            codes, gen_s = timed(lambda: benchmark_codes(data, size, cfg.queries, cfg.bits, seed=cfg.seed,
                                                         encoder_codes=cfg.encoder_codes))
            stamp(f"{size:,} {data} {cfg.bits}-bit codes (generated in {gen_s:.1f} s)")
            result["generators"][data] = codes.generator
            ctx = Context(cfg, size, data, cfg.bits, codes.database, codes.queries, ks=cfg.ks)
            rerank_here = cfg.rerank and size == largest and data == ("clustered" if "clustered" in cfg.data
                                                                      else cfg.data[-1])
            features = synthetic_features(size, cfg.feature_dim, cfg.seed) if rerank_here else None
            rows, kept = bench_kinds(ctx, stamp, features=features)
            result["rows"].extend(rows)
            if rerank_here:
                stamp(f"rerank over {size:,} codes, {cfg.feature_dim}-d float16 features")
                result["rerank"] = bench_rerank(ctx, features, kept.get("ivf"), rows, stamp)
            if cfg.shards and size == largest and data == cfg.data[0]:
                stamp(f"shards -> index, {size:,} codes")
                result["shards"] = bench_shards(cfg, codes.database, cfg.bits, stamp)
            del kept, codes, ctx, features
        if cfg.widths:
            stamp(f"code widths {list(cfg.widths)} at {size:,}")
            result["rows"].extend(bench_widths(cfg, size, stamp))
    stamp("GPU")
    result["gpu"] = bench_gpu(cfg, stamp)
    if hasattr(os, "getloadavg"):
        result["environment"]["load_average_at_end"] = list(os.getloadavg())
    cpu_at_end = _cpu_seconds()
    if cpu_at_start and cpu_at_end:
        other_s = (cpu_at_end[0] - cpu_at_start[0]) - (cpu_at_end[1] - cpu_at_start[1])
        result["environment"]["other_processes_cores"] = max(0.0, other_s) / (time.perf_counter() - start)
    result["load_warning"] = load_warning(result["environment"])
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
