"""The benchmark's results file (JSON) and its markdown tables."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..durable import write_json_atomic
from .format import fmt, fmt_n
from .plots import plot_results
from .targets import compute_targets, load_warning

METHOD = {
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


def write_outputs(result: dict, out_dir: str | os.PathLike, name: str = "latency") -> dict:
    """``<name>.json``, ``<name>.md`` and the PNG plots under ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / f"{name}.json"), "markdown": str(out / f"{name}.md")}
    files.update(plot_results(result, out, name))
    result["files"] = files
    write_json_atomic(out / f"{name}.json", json.loads(json.dumps(result, default=jsonable)))
    (out / f"{name}.md").write_text(markdown_report(result), encoding="utf-8")
    return files


def render_results(json_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                   name: str | None = None) -> dict:
    """Recompute the targets and redraw the table and plots of a saved run (no measuring)."""
    path = Path(json_path)
    result = json.loads(path.read_text(encoding="utf-8"))
    result["targets"] = compute_targets(result)
    result["load_warning"] = load_warning(result["environment"])
    result["files"] = write_outputs(result, out_dir or path.parent, name or path.stem)
    return result


def jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _mb(n) -> str:
    return "—" if n is None else f"{n / 2**20:,.1f}"


def markdown_report(result: dict) -> str:
    """Targets, a summary per database and the full tables, as markdown."""
    env, cfg = result["environment"], result["config"]
    lines = ["# hashindex latency benchmark",
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
        where = ", ".join(f"{k}={fmt_n(v) if k == 'size' else v}" for k, v in t["where"].items())
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in t["measured"].items()
                 if not isinstance(v, dict)}
        met = "—" if t["met"] is None else ("yes" if t["met"] else f"**no** ({t['missed_by']})")
        note = f" {t['note']}" if t.get("note") else ""
        lines.append(f"| {t['name']} | {where} | {_short(shown)}{note} | {t['goal']} | {fmt(t['ratio'])} | {met} |")
    rows = [r for r in result["rows"] if r["section"] == "kinds"]
    for size in sorted({r["size"] for r in rows}):
        for data in sorted({r["data"] for r in rows if r["size"] == size}):
            sel = [r for r in rows if r["size"] == size and r["data"] == data]
            lines += ["", f"## {fmt_n(size)} {data} {sel[0]['bits']}-bit codes", "",
                      "| system | index | k | recall | QPS (batch) | best QPS | median ms | p99 ms | build s "
                      "| memory MiB |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for r in sel:
                lat = r["latency_ms"]
                lines.append(f"| {r['system']} | {r['spec']} | {r['k']} | {r['recall']:.3f} | {fmt(r['qps'])} "
                             f"(n={r['batch_queries']}) | {fmt(r.get('best_qps'))} | {lat['median_ms']:.3f} | "
                             f"{lat['p99_ms']:.3f} | "
                             f"{fmt(r['build_s'])} | {_mb(r['memory_bytes'])} |")
    widths = [r for r in result["rows"] if r["section"] == "widths"]
    if widths:
        lines += ["", "## Code widths: hashindex (zero-padded) vs raw Faiss at the native width, flat, k=8", "",
                  "| size | bits | system | stored bits | QPS (batch) | median ms | p99 ms | recall | memory MiB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in widths:
            lines.append(f"| {fmt_n(r['size'])} | {r['bits']} | {r['system']} | {r['faiss_bits']} | "
                         f"{fmt(r['qps'])} | "
                         f"{r['latency_ms']['median_ms']:.3f} | {r['latency_ms']['p99_ms']:.3f} | {r['recall']:.3f} | "
                         f"{_mb(r['memory_bytes'])} |")
    if result.get("rerank"):
        lines += ["", "## Coarse-then-fine rerank", "",
                  "| size | coarse index | search | features | QPS (batch) | median ms | p99 ms |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["rerank"]:
            lines.append(f"| {fmt_n(r['size'])} {r['data']} | {r['index']} | {r['search']} | {r['feature_dim']}-d "
                         f"{r['feature_dtype']} | {fmt(r['qps'])} | {r['latency_ms']['median_ms']:.3f} | "
                         f"{r['latency_ms']['p99_ms']:.3f} |")
    if result.get("shards"):
        s = result["shards"]
        lines += ["", "## HDF5 shards -> index", "",
                  f"{fmt_n(s['size'])} codes in shards of {fmt_n(s['shard_size'])}: written in {s['write_s']:.1f} s, "
                  f"loaded into a flat HashIndex in {s['load_s']:.2f} s ({s['load_s_per_million']:.3f} s per million; "
                  f"{s['note']})."]
    gpu = result.get("gpu") or {}
    lines += ["", "## GPU", ""]
    if gpu.get("skipped"):
        lines.append(f"Skipped: {gpu['skipped']}.")
    else:
        lines += ["| size | k | QPS (batch) | median ms | p99 ms | recall |", "|---|---|---|---|---|---|"]
        for r in gpu.get("rows", []):
            lines.append(f"| {fmt_n(r['size'])} | {r['k']} | {fmt(r['qps'])} | {r['latency_ms']['median_ms']:.3f} | "
                         f"{r['latency_ms']['p99_ms']:.3f} | {r['recall']:.3f} |")
    if result.get("files"):
        lines += ["", "## Plots", ""] + [f"![{k}]({Path(v).name})" for k, v in result["files"].items()
                                          if v.endswith(".png")]
    return "\n".join(lines) + "\n"


def _short(d: dict) -> str:
    return ", ".join(f"{k}={fmt(v, 4)}" for k, v in d.items())
