"""A spec sweep on one database: every index built once (cached on disk), then searches timed.

At 10M codes on 2 cores the builds (k-means, HNSW graphs) take minutes each while the searches
take microseconds, so the two are separate steps: :func:`build_indexes` (run it at low CPU
priority) saves each built :class:`~hashindex.HashIndex` with its build time and memory under a
cache folder; :func:`measure_sweep` loads them and times single queries and batches over each
spec's search-parameter grid, against exact flat search timed in the same run. Indexes whose
build failed or was not run are reported as missing, never measured half-built.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from ..datasets import SyntheticCodes, benchmark_codes
from ..durable import write_json_atomic
from ..index import HashIndex
from ..spec import KINDS, IndexSpec, parse_spec
from ..timing import environment, time_single, timed
from .harness import TARGET_RECALL, distance_recall, time_batch
from .sections import hashindex_bytes
from .targets import AUTO_SLOWDOWN, BEST_MS, BEST_VS_FLAT, fastest_row

#: Search-parameter grids of the sweep, per parameter name.
DEFAULT_GRIDS = {"nprobe": (1, 2, 4, 8, 16, 32, 64), "efSearch": (16, 32, 64, 128, 256), "nflip": (0, 1, 2),
                 "quantizer_efSearch": (16, 32, 64, 128)}
BUILD_RECORD = "build.json"


@dataclass
class SweepConfig:
    """One database (``data`` kind at ``size``), the specs to build, and how to time them."""

    data: str = "clustered10000-perturbed"
    size: int = 10_000_000
    bits: int = 64
    queries: int = 300
    k: int = 8
    specs: tuple[str, ...] = ("IVF4096", "IVF16384_HNSW32", "IVF65536_HNSW32", "MultiHash4x16")
    auto: tuple[str, ...] = ("auto,recall=0.95",)
    grids: dict = field(default_factory=lambda: dict(DEFAULT_GRIDS))
    #: HNSW graph construction depth (``efConstruction``) for HNSW specs.
    ef_construction: int = 40
    budget_s: float = 1.0
    batch: int = 300
    seed: int = 0
    encoder_codes: str | None = None

    def codes(self) -> SyntheticCodes:
        return benchmark_codes(self.data, self.size, self.queries, self.bits, seed=self.seed,
                               encoder_codes=self.encoder_codes)


def cache_folder(cfg: SweepConfig, cache: str | os.PathLike) -> Path:
    """Where ``cfg``'s indexes live under ``cache``: one folder per database. The query mode is
    not part of it (``clustered10000`` and ``clustered10000-perturbed`` share one database)."""
    return Path(cache) / f"{cfg.data.removesuffix('-perturbed')}-{cfg.size}-{cfg.bits}-seed{cfg.seed}"


def cache_name(spec: str) -> str:
    """A folder name for ``spec`` (its canonical form, commas and ``=`` made safe)."""
    return str(parse_spec(spec)).replace(",", "_").replace("=", "-")


def build_indexes(cfg: SweepConfig, cache: str | os.PathLike, log: Callable[[str], None] = print,
                  codes: SyntheticCodes | None = None) -> dict[str, dict]:
    """Build every spec of ``cfg`` (and each ``auto`` request) not yet in ``cache`` and save it
    with its build record (seconds, bytes). Returns the build records by spec."""
    cache = cache_folder(cfg, cache)
    codes = codes or cfg.codes()
    records = {}
    for spec in (*cfg.specs, *cfg.auto):
        folder = cache / cache_name(spec)
        if (folder / BUILD_RECORD).exists():
            records[spec] = json.loads((folder / BUILD_RECORD).read_text())
            log(f"{spec}: cached ({records[spec]['build_s']:.1f} s build)")
            continue
        index = HashIndex(cfg.bits, spec)
        if parse_spec(spec).kind == "HNSW":
            index.faiss_index.hnsw.efConstruction = cfg.ef_construction
        cpu_start = time.process_time()
        _, build_s = timed(lambda: index.add(codes.database))
        # CPU seconds of all threads: what the build costs, whatever else shares the machine.
        record = {"spec": spec, "built": str(index.spec), "build_s": build_s,
                  "build_cpu_s": time.process_time() - cpu_start, "threads": faiss.omp_get_max_threads(),
                  "memory_bytes": hashindex_bytes(index), "ef_construction":
                  cfg.ef_construction if parse_spec(spec).kind == "HNSW" else None}
        index.save(folder)
        write_json_atomic(folder / BUILD_RECORD, record)  # written last: a folder without it is unfinished
        records[spec] = record
        log(f"{spec}: built {index.spec} in {build_s:.1f} s ({record['build_cpu_s']:.1f} CPU s), "
            f"{record['memory_bytes'] / 2**20:.0f} MiB")
        del index
    return records


def measure_sweep(cfg: SweepConfig, cache: str | os.PathLike, log: Callable[[str], None] = print,
                  codes: SyntheticCodes | None = None) -> dict:
    """Time flat and every cached index over its parameter grid; ``auto`` beside the fastest
    hand-set configuration reaching its requested recall, in alternation. Returns the results
    (rows, flat latency, ratios) as a JSON-able dict."""
    cache = cache_folder(cfg, cache)
    codes = codes or cfg.codes()
    start = time.perf_counter()
    result: dict = {"benchmark": "hashindex spec sweep", "environment": environment(), "config": asdict(cfg),
                    "generator": codes.generator, "rows": [], "missing": []}
    flat = HashIndex(cfg.bits, "flat")
    flat.add(codes.database)
    exact_D, _ = flat.search(codes.queries, cfg.k)
    kth = exact_D[:, cfg.k - 1]

    def measure(index: HashIndex, label: str, record: dict) -> dict:
        single = time_single({label: lambda q, k: index.search(q, k)}, codes.queries, cfg.k, cfg.budget_s,
                             len(codes.queries))[label]
        batch = time_batch({label: lambda q, k: index.search(q, k)[1]}, codes.queries, cfg.k, cfg.batch,
                           cfg.budget_s, single.min_ms / 1e3)[label]
        recall = distance_recall(codes.queries[: batch.queries], codes.database, batch.ids, kth[: batch.queries])
        row = {"spec": label, "kind": index.spec.kind, "recall": recall, "recall_queries": batch.queries,
               "latency_ms": asdict(single), "qps": batch.qps, "build_s": record.get("build_s"),
               "build_cpu_s": record.get("build_cpu_s"), "memory_bytes": record.get("memory_bytes")}
        result["rows"].append(row)
        log(f"  {label}: recall {recall:.3f}, {single.median_ms:.4f} ms/query, {batch.qps:,.0f} QPS")
        return row

    flat_row = measure(flat, "flat", {"build_s": None, "memory_bytes": hashindex_bytes(flat)})
    for spec in cfg.specs:
        index = _load_cached(cache / cache_name(spec), result, spec, log)
        if index is None:
            continue
        record = json.loads((cache / cache_name(spec) / BUILD_RECORD).read_text())
        for params in grid(index.spec, cfg.grids):
            index.set_search_params(**params)
            measure(index, str(index.spec), record)
        del index
    flat_again = measure(flat, "flat", {"build_s": None, "memory_bytes": hashindex_bytes(flat)})
    flat_ms = float(np.mean([flat_row["latency_ms"]["median_ms"], flat_again["latency_ms"]["median_ms"]]))
    result["flat_ms"] = flat_ms
    best = approximate_best(result["rows"], TARGET_RECALL)
    if best is not None:  # flat and the best configuration in alternation: one ratio under one load
        best_index = _load_config(cache, best["spec"])
        paired = time_single({"flat": lambda q, k: flat.search(q, k), "best": lambda q, k: best_index.search(q, k)},
                             codes.queries, cfg.k, cfg.budget_s * 4, len(codes.queries))
        result["paired_best"] = {"spec": best["spec"], "flat": asdict(paired["flat"]), "best": asdict(paired["best"]),
                                 "vs_flat": paired["flat"].median_ms / paired["best"].median_ms}
        log(f"  {best['spec']} vs flat in alternation: {paired['best'].median_ms:.4f} vs "
            f"{paired['flat'].median_ms:.2f} ms = {result['paired_best']['vs_flat']:.0f}x")
        del best_index
    result["auto"] = [_measure_auto(cfg, cache, request, codes, kth, result, log) for request in cfg.auto]
    result["summary"] = summarise(result)
    result["elapsed_s"] = time.perf_counter() - start
    result["environment"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return result


def grid(spec: IndexSpec, grids: dict) -> list[dict]:
    """Every combination of the kind's search parameters over ``grids`` (``nprobe`` up to nlist);
    a parameter without a grid keeps its default, and a kind without parameters gives ``[{}]``."""
    axes = [[(name, v) for v in grids.get(name, ()) if name != "nprobe" or v <= spec.args[0]]
            for name in KINDS[spec.kind].params]
    return [dict(combo) for combo in itertools.product(*[axis for axis in axes if axis])]


def _load_cached(folder: Path, result: dict, spec: str, log) -> HashIndex | None:
    if not (folder / BUILD_RECORD).exists():
        result["missing"].append(spec)
        log(f"  {spec}: not built (run the build step first)")
        return None
    return HashIndex.load(folder)


def _load_config(cache: Path, spec: str) -> HashIndex:
    """The cached index of ``spec``'s kind and arguments, with ``spec``'s search parameters set."""
    parsed = parse_spec(spec)
    index = HashIndex.load(cache / cache_name(str(IndexSpec(parsed.kind, parsed.args))))
    index.set_search_params(**parsed.params)
    return index


def _measure_auto(cfg: SweepConfig, cache: Path, request: str, codes: SyntheticCodes, kth: np.ndarray,
                  result: dict, log) -> dict | None:
    """``auto``'s index and the fastest hand-set row reaching its requested recall, timed in alternation."""
    auto = _load_cached(cache / cache_name(request), result, request, log)
    if auto is None:
        return None
    record = json.loads((cache / cache_name(request) / BUILD_RECORD).read_text())
    target = parse_spec(request).params.get("recall", TARGET_RECALL)
    hand = approximate_best(result["rows"], target)
    fns = {"auto": lambda q, k: auto.search(q, k)}
    if hand is not None:
        hand_index = _load_config(cache, hand["spec"])
        fns["hand"] = lambda q, k: hand_index.search(q, k)
    single = time_single(fns, codes.queries, cfg.k, cfg.budget_s * 2, len(codes.queries))
    _, I = auto.search(codes.queries, cfg.k)
    out = {"request": request, "chosen": str(auto.spec), "build_s": record["build_s"],
           "build_cpu_s": record.get("build_cpu_s"),
           "memory_bytes": record["memory_bytes"], "recall": distance_recall(codes.queries, codes.database, I, kth),
           "calibrated_recall": auto.metadata["auto"]["recall"], "latency_ms": asdict(single["auto"]),
           "candidates": auto.metadata["auto"]["candidates"],
           "hand_set": None if hand is None else {"spec": hand["spec"], "recall": hand["recall"],
                                                  "latency_ms": asdict(single["hand"])}}
    if hand is not None:
        out["vs_hand_set"] = single["auto"].median_ms / single["hand"].median_ms
    log(f"  {request} -> {out['chosen']}: recall {out['recall']:.3f} (calibrated {out['calibrated_recall']:.3f}), "
        f"{single['auto'].median_ms:.4f} ms" + (f" vs hand-set {hand['spec']} {single['hand'].median_ms:.4f} ms"
                                                 if hand else ""))
    return out


def approximate_best(rows: list[dict], min_recall: float) -> dict | None:
    """The fastest non-flat row (median single-query latency) reaching ``min_recall``."""
    return fastest_row([r for r in rows if r["spec"] != "flat"], min_recall)


def summarise(result: dict) -> dict:
    """The issue's goals read off a sweep: best config at recall >= 0.95 vs flat, and auto vs it."""
    best = approximate_best(result["rows"], TARGET_RECALL)
    summary: dict = {"flat_ms": result["flat_ms"], "best": None}
    if best is not None:
        paired = result.get("paired_best")
        # The goal is read as the issue measured it: each index timed warm in the same sweep. In
        # alternation every flat scan (the whole database) evicts the caches the next ANN query
        # would use, so that ratio is the pessimistic bound, reported beside it.
        speedup = result["flat_ms"] / best["latency_ms"]["median_ms"]
        summary["best"] = {"spec": best["spec"], "recall": best["recall"], "ms": best["latency_ms"]["median_ms"],
                           "vs_flat": speedup, "vs_flat_met": speedup >= BEST_VS_FLAT,
                           "vs_flat_alternating": paired["vs_flat"] if paired else None,
                           "ms_met": best["latency_ms"]["median_ms"] <= BEST_MS, "build_s": best["build_s"],
                           "build_cpu_s": best["build_cpu_s"]}
    for auto in result.get("auto") or []:
        if auto and auto.get("vs_hand_set") is not None:
            auto["within_goal"] = auto["vs_hand_set"] <= AUTO_SLOWDOWN
    return summary


def sweep_markdown(result: dict) -> str:
    """The sweep's table (one row per configuration) and its summary, as markdown."""
    env, cfg, s = result["environment"], result["config"], result["summary"]
    lines = [f"# Spec sweep: {cfg['size']:,} {cfg['data']} {cfg['bits']}-bit codes, k = {cfg['k']}", "",
             f"{env['cpu']}, {env['usable_cores']} cores, Faiss {env['versions']['faiss']} with "
             f"{env['faiss_threads']} thread(s); load average at start {env['load_average_at_start']}, at end "
             f"{env.get('load_average_at_end')}; {env['started_utc']}; measuring took {result['elapsed_s']:.0f} s.",
             "", f"Codes: {result['generator']}. {cfg['queries']} queries; recall = distance recall@{cfg['k']} "
             "against exact flat search; latency = single-query median (p99); build = wall seconds to train and "
             "fill at low CPU priority on the shared machine (CPU seconds of all threads).", ""]
    if s["best"]:
        b = s["best"]
        paired = result.get("paired_best")
        alternating = (f" Timed in alternation with flat (each flat scan evicting the caches before the next "
                       f"query): {paired['best']['median_ms']:.4f} vs {paired['flat']['median_ms']:.2f} ms = "
                       f"{b['vs_flat_alternating']:.0f}x." if paired else "")
        lines += [f"Best configuration at recall >= {TARGET_RECALL}: `{b['spec']}` (recall {b['recall']:.3f}), "
                  f"{b['ms']:.4f} ms vs flat {s['flat_ms']:.2f} ms in the sweep = **{b['vs_flat']:.0f}x** "
                  f"(goal {BEST_VS_FLAT:g}x: {'met' if b['vs_flat_met'] else 'not met'}; "
                  f"<= {BEST_MS} ms: {'met' if b['ms_met'] else 'not met'}).{alternating}", ""]
    for auto in result.get("auto") or []:
        if auto:
            hand = auto["hand_set"]
            lines += [f"`{auto['request']}` -> `{auto['chosen']}`: recall {auto['recall']:.3f} on these queries "
                      f"(calibrated {auto['calibrated_recall']:.3f}), {auto['latency_ms']['median_ms']:.4f} ms, "
                      f"built and tuned in {auto['build_s']:.0f} s"
                      + ("" if auto.get("build_cpu_s") is None else f" ({auto['build_cpu_s']:.0f} CPU s)")
                      + (f"; best hand-set `{hand['spec']}` {hand['latency_ms']['median_ms']:.4f} ms in "
                         f"alternation: {auto['vs_hand_set']:.2f}x (goal <= {AUTO_SLOWDOWN}x)" if hand else ""), ""]
    if result["missing"]:
        lines += ["Not built: " + ", ".join(f"`{m}`" for m in result["missing"]), ""]
    lines += ["| spec | recall | median ms (p99) | vs flat | QPS (batch) | build s (CPU s) | memory MiB |",
              "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lat = r["latency_ms"]
        lines.append(f"| {r['spec']} | {r['recall']:.3f} | {lat['median_ms']:.4f} ({lat['p99_ms']:.3f}) | "
                     f"{result['flat_ms'] / lat['median_ms']:.0f}x | {r['qps']:,.0f} | "
                     + ("—" if r["build_s"] is None else f"{r['build_s']:.0f}"
                        + ("" if r.get("build_cpu_s") is None else f" ({r['build_cpu_s']:.0f})"))
                     + f" | {r['memory_bytes'] / 2**20:,.0f} |")
    return "\n".join(lines) + "\n"
