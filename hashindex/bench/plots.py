"""The benchmark's plots, drawn from its results dictionary (matplotlib, imported when drawing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .format import fmt_n
from .harness import TARGET_RECALL
from .targets import fastest_row

_STYLE = {("hashindex", "flat"): ("C0", "s"), ("hashindex", "IVF"): ("C1", "o"), ("hashindex", "HNSW"): ("C2", "^"),
          ("hashindex", "IVF_HNSW"): ("C8", "h"),
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
                ax.set_title(f"{fmt_n(size)} {data} {rows[0]['bits']}-bit codes")
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
                b = fastest_row([r for r in rows if r["data"] == data and r["size"] == size and r["system"] == "hashindex"
                              and r["kind"] != "flat"], TARGET_RECALL)
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
        ax.set_title(f"flat search, {fmt_n(size)} uniform codes")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{name}_widths.png"
        fig.savefig(path, dpi=110)
        files["widths"] = str(path)
    return files


def plot_sweep(result: dict, out_dir: Path, name: str) -> dict:
    """Single-query latency vs recall of a spec sweep, one line per built index (and per
    ``quantizer_efSearch``), flat and the issue's latency goal as horizontal lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .targets import BEST_VS_FLAT

    series: dict[str, list[tuple[float, float]]] = {}
    for row in result["rows"]:
        if row["spec"] != "flat":
            head, *params = row["spec"].split(",")
            label = ",".join([head] + [p for p in params if not p.startswith(("nprobe", "efSearch", "nflip"))])
            series.setdefault(label, []).append((row["recall"], row["latency_ms"]["median_ms"]))
    fig = Figure(figsize=(7, 4.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, points in series.items():
        ax.plot(*zip(*sorted(points)), marker="o", markersize=3, label=label)
    ax.axhline(result["flat_ms"], color="k", linestyle="--", label=f"flat ({result['flat_ms']:.1f} ms)")
    ax.axhline(result["flat_ms"] / BEST_VS_FLAT, color="r", linestyle=":", label=f"flat / {BEST_VS_FLAT:g}")
    ax.axvline(TARGET_RECALL, color="grey", linestyle=":")
    ax.set_yscale("log")
    ax.set_xlabel(f"distance recall@{result['config']['k']}")
    ax.set_ylabel("single-query median latency (ms)")
    ax.set_title(f"{fmt_n(result['config']['size'])} {result['config']['data']} codes")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    path = out_dir / f"{name}_latency_recall.png"
    fig.savefig(path, dpi=110)
    return {"latency_vs_recall": str(path)}
