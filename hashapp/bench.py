"""``hashindex bench``: the latency benchmark's command (the logic is :mod:`hashindex.bench`)."""

from __future__ import annotations

import click
import faiss

from hashindex.bench import BenchConfig, render_results, run_latency_benchmark
from hashindex.bench.format import fmt


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
@click.option("--data", default="uniform,clustered", show_default=True,
              help="data kinds: uniform, clustered[<centres>], encoder; -perturbed: queries are database codes "
                   "with 5%% of bits flipped (default: held-out codes)")
@click.option("--target-data", default=None, help="data kind the targets are read on (default: clustered)")
@click.option("--encoder-codes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="codes file of benchmarks/encoder_codes.py, for the encoder data kinds")
@click.option("--ivf-hnsw-lists", default=4, show_default=True,
              help="IVF over an HNSW quantiser with this many times sqrt(n) lists, on the target data (0: skip)")
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
def bench_command(sizes, bits, widths, data, target_data, encoder_codes, ivf_hnsw_lists, ks, queries, budget,
                  hnsw_max_size, hnsw_data, feature_dim, usearch, rerank, shards, threads, seed, out, name, from_json):
    """Latency benchmark: index kinds vs raw Faiss, numpy and usearch, with recall, ratios and plots."""
    if from_json:
        result = render_results(from_json, out, name)
    else:
        cfg = BenchConfig(sizes=_int_list(sizes), bits=bits, widths=_int_list(widths), data=tuple(data.split(",")),
                          ks=_int_list(ks), batch=queries, queries=queries, budget_s=budget,
                          hnsw_max_size=_int_list(hnsw_max_size)[0], hnsw_data=tuple(hnsw_data.split(",")),
                          feature_dim=feature_dim, usearch=usearch, rerank=rerank, shards=shards, seed=seed,
                          target_data=target_data, encoder_codes=encoder_codes, ivf_hnsw_lists=ivf_hnsw_lists)
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads or previous)
        try:
            result = run_latency_benchmark(cfg, out_dir=out, name=name, log=lambda m: click.echo(m, err=True))
        finally:
            faiss.omp_set_num_threads(previous)
    for t in result["targets"]:
        status = "—" if t["met"] is None else ("met" if t["met"] else f"MISSED ({t['missed_by']})")
        click.echo(f"{t['name']}: ratio {fmt(t['ratio'])} [{t['goal']}] {status}")
    click.echo(f"wrote {', '.join(result['files'].values())}")
