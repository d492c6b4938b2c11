"""Real encoder codes for the latency benchmark's ``encoder`` data kind.

An ITQ hasher (``create_encoder("itq", bits=64)``, PCA + iterative quantisation) is fitted
on the pixels of 5,000 MNIST test images; it encodes 8,000 MNIST images and 1,500 sklearn
digits (upscaled to 28 x 28) as the base collection, and the remaining 2,000 MNIST images
and 297 digits as queries: their images are in no copy of the base, so the queries are
held out of the index. The benchmark tiles the base to its database size with per-copy bit
noise (:func:`hashindex.datasets.tiled_codes`).

Why ITQ on pixels: it is one of this project's trained encoders, it trains in seconds on a
shared 2-core machine, and its codes keep the structure of real images (ten digit classes
with many writing styles each, two sources of images), which random centre codes do not.
A deep encoder's codes would be more tightly clustered by class.

    python benchmarks/encoder_codes.py      # writes benchmarks/results/encoder_codes.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from encoders import create_encoder
from hashindex.datasets import load_digits_images, load_mnist

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FIT_IMAGES = 5000
BASE_MNIST = 8000
BASE_DIGITS = 1500


def encoder_codes(bits: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Base and query codes (packed) with their digit labels."""
    mnist, mnist_labels = load_mnist()
    digits, digit_labels = load_digits_images(size=28)
    order = np.random.default_rng(seed).permutation(len(mnist))
    mnist, mnist_labels = mnist[order], mnist_labels[order]
    pixels = lambda images: images.reshape(len(images), -1).astype(np.float64) / 255.0  # noqa: E731
    itq = create_encoder("itq", bits=bits, seed=seed).fit(pixels(mnist[:FIT_IMAGES]))
    mnist_codes, digit_codes = itq.encode(pixels(mnist)), itq.encode(pixels(digits))
    return {"base": np.concatenate([mnist_codes[:BASE_MNIST], digit_codes[:BASE_DIGITS]]),
            "base_labels": np.concatenate([mnist_labels[:BASE_MNIST], digit_labels[:BASE_DIGITS]]),
            "queries": np.concatenate([mnist_codes[BASE_MNIST:], digit_codes[BASE_DIGITS:]]),
            "query_labels": np.concatenate([mnist_labels[BASE_MNIST:], digit_labels[BASE_DIGITS:]])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "encoder_codes.npz")
    args = parser.parse_args()
    codes = encoder_codes(args.bits, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez_compressed(tmp, **codes)
    tmp.replace(args.out)
    print(f"wrote {args.out}: {len(codes['base'])} base codes, {len(codes['queries'])} held-out query codes")


if __name__ == "__main__":
    main()
