"""Latency benchmark of hashindex against raw Faiss, numpy and usearch at millions of codes.

    python benchmarks/latency.py --sizes 1e6,1e7          # the README's run (< 10 min, 2 cores)
    python benchmarks/latency.py --sizes 2e4 --budget 0.05  # seconds
    python benchmarks/latency.py --sizes 1e6,1e7,1e8      # 100M codes fit in memory too

Writes ``latency.json`` (machine, versions, parameters, every figure, the targets as
ratios), ``latency.md`` (tables) and ``latency_*.png`` (QPS vs recall, latency vs size,
code widths) into ``benchmarks/results/`` (``--out`` to change). Same command as
``hashindex bench``; the logic lives in :mod:`hashindex.bench`.
"""

from pathlib import Path

from hashapp.bench import bench_command

if __name__ == "__main__":
    bench_command(prog_name="benchmarks/latency.py",
                  default_map={"out": str(Path(__file__).resolve().parent / "results")})
