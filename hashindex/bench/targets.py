"""The issue's latency targets, as ratios measured within one run."""

from __future__ import annotations

from .harness import TARGET_RECALL

#: The issue's goals for the best approximate configuration and for ``auto``.
BEST_VS_FLAT = 150.0
BEST_MS = 0.15
AUTO_SLOWDOWN = 1.2
AUTO_MIN_RECALL = 0.94
#: Other processes using more than this many cores on average make the run's timings suspect.
OTHER_CORES_WARNING = 0.2


def load_warning(env: dict) -> str | None:
    """A warning when other processes took more than ``OTHER_CORES_WARNING`` cores on average
    during the run (the load average cannot tell: it counts this benchmark's own threads)."""
    other = env.get("other_processes_cores")
    if other is not None and other > OTHER_CORES_WARNING:
        return (f"other processes kept {other:.2f} of {env.get('usable_cores')} cores busy on average during "
                "the run: timings, single-query ones above all, are noisy")
    return None


def target_data(cfg) -> str:
    """The data kind the issue's targets are read on (``BenchConfig.target_data``, else clustered)."""
    chosen = cfg.get("target_data") if isinstance(cfg, dict) else cfg.target_data
    return chosen or "clustered"


def select_rows(rows: list[dict], **where) -> list[dict]:
    return [r for r in rows if all(r.get(key) == value for key, value in where.items())]


def fastest_row(rows: list[dict], min_recall: float | None = None) -> dict | None:
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
    data = target_data(result["config"])
    data = data if select_rows(rows, data=data) else rows[0]["data"]
    where = {"size": largest, "data": data, "k": 8}
    at_10m = "" if largest == 10_000_000 else f"the issue sets this at 10M codes; largest size here is {largest:,}"
    targets = []

    def one(**sel) -> dict | None:
        found = select_rows(rows, **where, **sel)
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
        approx = [r for r in select_rows(rows, system="hashindex", **where) if r["kind"] != "flat"]
        best = fastest_row(approx, TARGET_RECALL)
        measured = {**_brief(best, "best"), "flat_ms": _ms(flat), "flat_qps": flat["qps"]}
        none = "no approximate configuration reached recall 0.95" if best is None else ""
        targets.append(_target("best approximate config (recall@8 >= 0.95) vs exact flat, single-query median",
                               f">= {BEST_VS_FLAT:g}x", where, best and _ms(flat) / _ms(best), BEST_VS_FLAT, measured,
                               none or at_10m))
        targets.append(_target(f"best approximate config (recall@8 >= 0.95): single-query median <= {BEST_MS:g} ms",
                               f"<= {BEST_MS:g} ms", where, best and BEST_MS / _ms(best), 1.0, measured, none or at_10m))
    for data_kind in sorted({r["data"] for r in rows}):
        here = {"size": largest, "data": data_kind, "k": 8}
        auto = select_rows(rows, system="hashindex", kind="auto", **here)
        if auto:
            auto = auto[0]
            level = min(auto["recall"], TARGET_RECALL)
            hand = fastest_row(select_rows(rows, system="faiss", **here), level)
            # Prefer the figures of the hand-set config timed in alternation with auto.
            paired = auto.get("paired_faiss")
            if hand and paired and paired["spec"] == hand["spec"] and paired["recall"] >= level:
                hand = dict(hand, latency_ms=paired["latency_ms"], qps=paired["qps"], recall=paired["recall"])
                how = "timed in alternation"
            else:
                how = "timed in separate sections"
            # The same comparison inside hashindex separates tuning quality from wrapper overhead.
            mine = fastest_row([r for r in select_rows(rows, system="hashindex", **here) if r["kind"] != "auto"], level)
            why = ""
            if hand and auto["spec"] == hand["spec"] and _ms(hand) < _ms(auto):
                why = ("auto chose the hand-set configuration itself; the gap is its own build of the index "
                       "(k-means on another sample) plus hashindex's per-call cost over raw Faiss")
            size_note = "" if largest == 10_000_000 else f"measured at {largest:,} codes"
            targets.append(_target(
                f"auto vs best hand-set raw Faiss config at the same recall ({data_kind}), single-query median",
                f"within {AUTO_SLOWDOWN:g}x", here, hand and _ms(hand) / _ms(auto), 1 / AUTO_SLOWDOWN,
                {**_brief(auto, "auto"), **_brief(hand, "hand_set"), "timing": how,
                 "auto_requested_recall": result["config"]["auto_recall"],
                 "vs_best_hand_set_hashindex": mine and _ms(mine) / _ms(auto),
                 "hand_set_hashindex": mine and mine["spec"]}, why))
            report = auto.get("auto") or {}
            targets.append(_target(
                f"auto,recall={result['config']['auto_recall']:g}: recall@8 on the run's out-of-index queries "
                f"({data_kind})", f">= {AUTO_MIN_RECALL:g}", here, auto["recall"] / AUTO_MIN_RECALL, 1.0,
                {"auto": auto["spec"], "recall": auto["recall"], "calibrated_recall": report.get("recall"),
                 "calibration": report.get("calibration")}))
            if data_kind == data:
                targets.append(_target(
                    "auto: build of the chosen index <= 2 min (tuning of every candidate: see measured)", "<= 120 s",
                    here, 120.0 / report["build_s"] if report.get("build_s") else None, 1.0,
                    {"chosen_build_s": report.get("build_s"), "auto_total_s": auto["build_s"],
                     "candidates": {c["spec"]: c.get("build_s") for c in report.get("candidates", [])}},
                    size_note))
    widths = [r for r in result["rows"] if r["section"] == "widths"]
    widths = [r for r in widths if r["size"] == max(w["size"] for w in widths)] if widths else []
    for bits in sorted({r["bits"] for r in widths}):
        h, f = select_rows(widths, system="hashindex", bits=bits), select_rows(widths, system="faiss", bits=bits)
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
    hnsw_sizes = sorted({r["size"] for r in select_rows(rows, system="usearch", kind="HNSW")})
    for size in hnsw_sizes[-1:]:
        for data_kind in sorted({r["data"] for r in rows}):
            here = {"size": size, "data": data_kind, "k": 8}
            u_rows = select_rows(rows, system="usearch", kind="HNSW", **here)
            if not u_rows:
                continue
            level = min(TARGET_RECALL, max(r["recall"] for r in u_rows))
            u = fastest_row(u_rows, level)
            mine = fastest_row(select_rows(rows, system="hashindex", **here), level)
            targets.append(_target(
                f"hashindex best vs usearch HNSW at recall@8 >= {level:.3f} ({data_kind}), single-query median",
                ">= 1x", here, mine and _ms(u) / _ms(mine), 1.0,
                {**_brief(u, "usearch"), **_brief(mine, "hashindex"),
                 "qps_ratio": mine and mine["qps"] / u["qps"]}))
    return targets
