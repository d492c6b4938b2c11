"""Index specs swept on one large database: builds cached on disk, searches timed apart from them.

    # 1. build (minutes at 10M on 2 cores; low priority, nothing timed but the builds themselves)
    nice -n 19 python benchmarks/ann_sweep.py build --cache /tmp/annb
    # 2. time the searches (seconds per spec; run it alone on the machine)
    python benchmarks/ann_sweep.py measure --cache /tmp/annb --out benchmarks/results --name ann10m

Defaults: the issue's case, 10M 64-bit codes from 10,000 centres (each bit flipped with p = 0.1),
300 perturbed database codes as queries (5 % of bits flipped), k = 8; specs IVF4096,
IVF16384_HNSW32, IVF65536_HNSW32, MultiHash4x16 and ``auto,recall=0.95``. ``--specs`` and
``--auto`` take comma-free lists separated by ``;``. The logic lives in :mod:`hashindex.bench.sweep`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import faiss

from hashindex.bench.plots import plot_sweep
from hashindex.bench.report import jsonable
from hashindex.bench.sweep import SweepConfig, build_indexes, measure_sweep, sweep_markdown
from hashindex.durable import write_json_atomic


def main() -> None:
    defaults = SweepConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=("build", "measure"))
    parser.add_argument("--cache", required=True, help="folder of the built indexes")
    parser.add_argument("--data", default=defaults.data)
    parser.add_argument("--size", type=float, default=defaults.size)
    parser.add_argument("--queries", type=int, default=defaults.queries)
    parser.add_argument("--specs", default=";".join(defaults.specs), help="index specs, ';'-separated")
    parser.add_argument("--auto", default=";".join(defaults.auto), help="auto requests, ';'-separated ('' for none)")
    parser.add_argument("--encoder-codes", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--name", default="ann_sweep")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    cfg = SweepConfig(data=args.data, size=int(args.size), queries=args.queries,
                      specs=tuple(s for s in args.specs.split(";") if s),
                      auto=tuple(s for s in args.auto.split(";") if s), encoder_codes=args.encoder_codes)
    if args.step == "build":
        build_indexes(cfg, args.cache)
        return
    result = measure_sweep(cfg, args.cache)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result["files"] = plot_sweep(result, out, args.name)
    write_json_atomic(out / f"{args.name}.json", json.loads(json.dumps(result, default=jsonable)))
    (out / f"{args.name}.md").write_text(sweep_markdown(result), encoding="utf-8")
    print(f"wrote {out / args.name}.json / .md")


if __name__ == "__main__":
    main()
