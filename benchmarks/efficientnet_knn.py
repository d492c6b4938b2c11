"""Does the offline EfficientNet-Lite0 embed real images sensibly? kNN accuracy of its F7
(1280-d, l2-normalised) on MNIST, ImageNet weights vs the same net untrained.

    python benchmarks/efficientnet_knn.py [--images 1000] [--size 96]

Writes ``benchmarks/results/efficientnet_knn.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from encoders import create_backbone
from hashindex.datasets import load_mnist

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def mnist_features(net, images: np.ndarray, size: int, batch_size: int = 100) -> np.ndarray:
    """F7 of greyscale ``images`` resized to ``size`` px, normalised as the net expects."""
    mean, std = (torch.tensor(v)[:, None, None] for v in (net.input_cfg["mean"], net.input_cfg["std"]))
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size]).float().div(255)[:, None].expand(-1, 3, -1, -1)
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            out.append(F.normalize(net((x - mean) / std), dim=1).numpy())
    return np.concatenate(out)


def run(n_images: int = 1000, size: int = 96, k: int = 5, seed: int = 0, mnist_root: str | None = None) -> dict:
    from sklearn.neighbors import KNeighborsClassifier

    images, labels = load_mnist(mnist_root)
    rows = np.random.default_rng(seed).permutation(len(images))[:n_images]
    n_train = int(0.7 * n_images)
    result = {"images": n_images, "train": n_train, "test": n_images - n_train, "size": size, "k": k}
    for pretrained in (True, False):
        torch.manual_seed(seed)
        net = create_backbone("efficientnet_lite0", pretrained=pretrained).eval()
        start = time.perf_counter()
        f = mnist_features(net, images[rows], size)
        knn = KNeighborsClassifier(k).fit(f[:n_train], labels[rows[:n_train]])
        name = "pretrained" if pretrained else "untrained"
        result[f"{name}_knn_accuracy"] = float(knn.score(f[n_train:], labels[rows[n_train:]]))
        result[f"{name}_embed_s"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mnist-root", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"benchmark": "efficientnet_knn", "torch": torch.__version__, "threads": args.threads,
              **run(args.images, args.size, mnist_root=args.mnist_root)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "efficientnet_knn.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
