"""Images per second of the distributed encode (1 and 2 Ray workers) vs the single-process encode.

An image folder of sklearn digits (written as PNG, resized to the backbone's input by the
encoder's transform) is encoded with a DLBHC head on ``--backbone`` (default: the pretrained
EfficientNet-Lite0 at 224 px, the expensive real case):

- single process, 1 torch thread (more with ``--single-threads``) (``encode_folder``);
- Ray with 1 and 2 workers, 1 torch thread each (``encode_folder_ray``): once ``cold``
  (fresh worker processes: Python + torch import and model load included), then ``warm``
  (workers kept from the previous run, as in a long encode where start-up is amortised).

The warm configurations and the single process run alternately, ``--rounds`` times in a
shuffled order, and the median is reported, so background load hits them alike.

One JSON (``benchmarks/results/ray_encode.json``); ratios are meaningful within one run only.

    python benchmarks/ray_encode.py --images 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance.")
    parser.add_argument("--single-threads", type=int, nargs="+", default=[1],
                        help="torch thread counts of the single-process encode.")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds of every configuration.")
    parser.add_argument("--out", type=Path, default=RESULTS / "ray_encode.json")
    args = parser.parse_args(argv)

    import ray

    from encoders import create_encoder, save_encoder
    from encoders.distributed_encode import encode_folder_ray
    from encoders.encode import encode_folder
    from hashindex.datasets import load_digits_images, write_image_folder
    from hashindex.cluster import connect

    result = {"benchmark": "ray_encode", "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "environment": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                              "torch": torch.__version__, "ray": ray.__version__, "load_average": os.getloadavg()},
              "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images, labels = load_digits_images(size=32)
        rows = np.arange(args.images) % len(images)
        folder = write_image_folder(images[rows], labels[rows], tmp / "images")
        torch.manual_seed(0)
        model = create_encoder("dlbhc", backbone=args.backbone, bits=args.bits, num_classes=10)
        model_file = save_encoder(model, tmp / "model.pt")

        def single(threads):
            def run(out):
                torch.set_num_threads(threads)
                encode_folder(model, folder, out, batch_size=args.batch_size, progress=False)
            return run

        def distributed(workers):
            def run(out):
                encode_folder_ray(model_file, folder, out, num_workers=workers, chunk_size=args.chunk_size,
                                  batch_size=args.batch_size, progress=False)
            return run

        connect(num_cpus=args.cpus)
        # Cold: the first Ray encode starts its worker processes (Python, torch, model load).
        t0 = time.perf_counter()
        distributed(max(args.workers))(tmp / "cold")
        cold = time.perf_counter() - t0
        result["runs"].append({"mode": "ray (cold)", "workers": max(args.workers), "threads": 1,
                               "seconds": [cold], "images_per_s": args.images / cold})
        print(f"ray (cold)     workers={max(args.workers)}: {args.images / cold:.2f} images/s")
        # Warm, alternating: every round runs each configuration once, in a shuffled order.
        configs = {("single process", 0, t): single(t) for t in args.single_threads}
        configs.update({("ray (warm)", w, 1): distributed(w) for w in args.workers})
        seconds = {key: [] for key in configs}
        rng = np.random.default_rng(0)
        keys = list(configs)
        for r in range(args.rounds):
            for i in rng.permutation(len(keys)):
                out = tmp / f"run-{r}-{i}"
                t0 = time.perf_counter()
                configs[keys[i]](out)
                seconds[keys[i]].append(time.perf_counter() - t0)
                shutil.rmtree(out)
        ray.shutdown()
        for (mode, workers, threads), times in seconds.items():
            median = float(np.median(times))
            result["runs"].append({"mode": mode, "workers": workers, "threads": threads, "seconds": times,
                                   "images_per_s": args.images / median})
            print(f"{mode:14s} workers={workers} threads={threads}: {args.images / median:.2f} images/s "
                  f"(median of {len(times)})")

    def rate(mode, workers, threads):
        return next(r["images_per_s"] for r in result["runs"]
                    if (r["mode"], r["workers"], r["threads"]) == (mode, workers, threads))

    base = rate("single process", 0, 1)
    result["summary"] = {f"{r['mode']}, {r['workers']} worker(s), {r['threads']} thread(s)":
                         round(r["images_per_s"] / base, 3) for r in result["runs"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("speed relative to the single process with 1 thread:", json.dumps(result["summary"], indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
