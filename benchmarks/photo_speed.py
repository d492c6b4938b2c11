"""Training and encoding speed, and peak memory, of a method on ``efficientnet_lite0`` at the defaults.

Short by design (run it under the timing lock on a quiet machine): views of the benchmark's
photographs (``benchmarks/photos.py``, 128 px, 16 classes) are written once; one warm-up
training epoch (``--warmup`` images: allocator and kernels settle) is not timed; then one
epoch over ``--images`` images is timed (image decoding and augmentation-free transforms
included, as ``hashindex train`` does), and so is encoding them (``encode_files``, batch 64).
Training uses ``resolve_train_config``'s defaults for the pretrained backbone (batch 32, early
layers frozen, the method's recipe). Peak memory is the process's ``VmHWM``.

``--end-to-end N`` also times, on a folder of ``N`` views, ``hashindex train`` at default flags
in a child process (start-up, model build, weights, the step budget's epochs, the code-health
pass, saving; its peak RSS is its own) and then ``encode_folder`` of the folder in this process
(what ``hashindex encode`` runs after start-up); the images/s are ``N`` over each wall time.

    python benchmarks/photo_speed.py --method dlbhc --images 128 --end-to-end 640 --threads 2

Writes ``benchmarks/results/photo_speed.json`` (``--name`` changes it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from photos import BACKBONE, load_photos, partition_classes, train_subprocess, write_views  # benchmarks/photos.py, beside this file
from encoders import create_encoder, load_encoder
from encoders.data import ImageList, list_images
from encoders.encode import encode_files, encode_folder
from encoders.training import TrainConfig, resolve_train_config, train_model

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def peak_rss_gb() -> float | None:
    """The process's peak resident memory (Linux ``VmHWM``), in GB; None elsewhere."""
    try:
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) / 1e6
    except (OSError, StopIteration):
        return None


def run(method: str = "dlbhc", images: int = 128, warmup: int = 32, threads: int = 2, seed: int = 0,
        backbone: str = BACKBONE, end_to_end: int = 0) -> dict:
    torch.set_num_threads(threads)
    photos = load_photos()
    seen, _ = partition_classes(0, sorted(photos))
    per_class = -(-(images + warmup) // len(seen))
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(seed)
        folder = write_views(photos, seen, per_class, Path(tmp) / "views", 128, "v")
        listing = list_images(folder)
        warm = ImageList(listing.root, listing.samples[:warmup], listing.classes)
        timed = ImageList(listing.root, listing.samples[warmup:warmup + images], listing.classes)
        torch.manual_seed(seed)
        model = create_encoder(method, backbone=backbone, bits=64, num_classes=len(seen))
        config = resolve_train_config(model, TrainConfig(epochs=1, seed=seed, device="cpu"))
        train_model(model, warm, config, progress=False)
        start = time.perf_counter()
        train_model(model, timed, config, progress=False)
        train_s = time.perf_counter() - start
        paths = [path for path, _ in timed.samples]
        encode_files(model, paths[:64], device="cpu")  # warm-up
        start = time.perf_counter()
        encode_files(model, paths, device="cpu")
        encode_s = time.perf_counter() - start
        result = {"method": method, "backbone": backbone, "input_size": list(model.input_cfg["input_size"]),
                  "images": len(timed), "train_s": train_s, "train_images_per_s": len(timed) / train_s,
                  "encode_s": encode_s, "encode_images_per_s": len(timed) / encode_s,
                  "peak_rss_gb": peak_rss_gb(), "train_config": asdict(config), "threads": threads}
        if end_to_end:
            result["end_to_end"] = time_commands(photos, seen, end_to_end, Path(tmp), method, backbone, seed)
    return result


def time_commands(photos: dict, seen: list[str], images: int, tmp: Path, method: str, backbone: str,
                  seed: int) -> dict:
    """On ``images`` views at default flags: the wall time and peak RSS of ``hashindex train`` in a
    child process (start-up included), and the wall time of ``encode_folder`` in this one (what
    ``hashindex encode`` runs after start-up)."""
    torch.manual_seed(seed + 1)
    folder = write_views(photos, seen, -(-images // len(seen)), tmp / "end_to_end", 128, "e")
    train = train_subprocess(method, folder, tmp / "model.pt", epochs=None, seed=seed, threads=torch.get_num_threads(),
                             device="cpu", extra_args=[], backbone=backbone)
    start = time.perf_counter()
    report = encode_folder(load_encoder(tmp / "model.pt"), folder, tmp / "shards", device="cpu", progress=False)
    encode_s = time.perf_counter() - start
    return {"images": report.encoded, "train_s": train["train_s"], "train_images_per_s": report.encoded / train["train_s"],
            "train_peak_rss_gb": train["peak_rss_gb"], "encode_s": encode_s,
            "encode_images_per_s": report.encoded / encode_s}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="dlbhc")
    parser.add_argument("--images", type=int, default=128, help="timed images (a multiple of the batch, 32)")
    parser.add_argument("--warmup", type=int, default=32)
    parser.add_argument("--end-to-end", type=int, default=0, metavar="N",
                        help="also time `hashindex train` (a child process) and encode_folder on N views (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbone", default=BACKBONE, help="(another backbone: for smoke tests)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="photo_speed")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    result = run(args.method, args.images, args.warmup, args.threads, backbone=args.backbone,
                 end_to_end=args.end_to_end)
    result["environment"] = {"python": platform.python_version(), "torch": torch.__version__,
                             "platform": platform.platform(), "cpu_count": os.cpu_count(),
                             "load_average_before": load_before, "load_average_after": os.getloadavg()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    print(f"{args.method} on {args.backbone} ({result['input_size'][1]} px input), {args.threads} thread(s): training "
          f"{result['train_images_per_s']:.2f} images/s, encoding {result['encode_images_per_s']:.2f} images/s, "
          f"peak RSS {result['peak_rss_gb']:.2f} GB; load average {load_before[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    if args.end_to_end:
        e2e = result["end_to_end"]
        print(f"end to end on {e2e['images']} views: hashindex train {e2e['train_s']:.1f} s "
              f"({e2e['train_images_per_s']:.2f} images/s, peak RSS {e2e['train_peak_rss_gb']:.2f} GB), encode "
              f"{e2e['encode_s']:.1f} s ({e2e['encode_images_per_s']:.2f} images/s)")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
