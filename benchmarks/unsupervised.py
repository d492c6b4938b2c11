"""Unsupervised hashing compared by precision / recall: LSH, PCAH, ITQ, SH, SpH, DSH and GAN
hashing on MNIST and sklearn digits, 16 / 32 / 64 bits.

Features are raw pixels in [0, 1] (MNIST 28 x 28 -> 784-d; the 8 x 8 digits upscaled to
16 x 16 -> 256-d). A seeded random split gives the queries; every method is fitted on the
database (the usual protocol of the unsupervised hashing papers). Labels are used only to
score: mAP over the whole Hamming ranking (exact, ties by database position), P@k from a
flat ``HashIndex`` search, and precision-recall curves of Hamming-radius retrieval.

    python benchmarks/unsupervised.py                                # everything
    python benchmarks/unsupervised.py --datasets digits --bits 32 --methods lsh,itq,gan_hash

Writes ``unsupervised.json``, ``unsupervised.md`` and ``unsupervised_pr_<dataset>.png`` to
``benchmarks/results/`` (``--out``); the table and plots are drawn from the JSON
(``--render-only`` redraws them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from encoders import create_encoder
from hashindex import metrics
from hashindex.bench.args import name_list
from hashindex.datasets import load_digits_images, load_mnist
from hashindex.index import HashIndex
from hashindex.timing import environment

RESULTS_DIR = Path(__file__).resolve().parent / "results"
METHODS = ("lsh", "pcah", "itq", "sh", "sph", "dsh", "gan_hash")
LABELS = {"lsh": "LSH", "pcah": "PCAH", "itq": "ITQ", "sh": "SH", "sph": "SpH", "dsh": "DSH", "gan_hash": "GAN hashing"}
BITS = (16, 32, 64)


@dataclass
class DatasetSetup:
    name: str
    n_queries: int
    precision_k: tuple[int, ...]
    #: GAN hashing keywords for this dataset (the rest are the registered defaults).
    gan_kwargs: dict = field(default_factory=dict)
    description: str = ""


DATASETS = {
    "mnist": DatasetSetup("mnist", 1000, (100, 1000), {"epochs": 20},
                          "MNIST t10k (10,000 images), 28x28 pixels -> 784-d"),
    "digits": DatasetSetup("digits", 297, (10, 100), {"epochs": 60},
                           "sklearn digits (1,797 images), 8x8 upscaled to 16x16 pixels -> 256-d"),
}


def load_features(name: str, mnist_root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pixel features ``(n, d)`` float32 in [0, 1] and labels ``(n,)``."""
    if name == "mnist":
        images, labels = load_mnist(mnist_root)
    elif name == "digits":
        images, labels = load_digits_images(size=16)
    else:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return images.reshape(len(images), -1).astype(np.float32) / 255.0, labels


def split(n: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random (database rows, query rows), each sorted."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_queries:]), np.sort(order[:n_queries])


def score(query_codes, query_labels, db_codes, db_labels, bits: int, precision_k: tuple[int, ...]) -> dict:
    """mAP@all, P@k (flat HashIndex search), P within radius 2 and the P-R curve."""
    out = {"mAP": metrics.mean_average_precision(query_codes, query_labels, db_codes, db_labels, bits, k=None)}
    index = HashIndex(bits=bits, spec="flat")
    index.add(db_codes, labels=db_labels)
    _, ids = index.search(query_codes, k=min(max(precision_k), len(db_codes)))
    knn_labels = index.labels_of(ids)
    for k in precision_k:
        out[f"P@{k}"] = float(metrics.precision_at_k(knn_labels[:, :k], query_labels).mean())
    curve = metrics.precision_recall_curve(query_codes, query_labels, db_codes, db_labels, bits)
    out["P@r2"] = float(curve["precision"][min(2, bits)])
    out["curve"] = {"radius": curve["radius"].tolist(), "precision": curve["precision"].tolist(),
                    "recall": curve["recall"].tolist()}
    return out


def run_dataset(name: str, methods: list[str], bits_list: list[int], *, seed: int = 0, mnist_root: str | None = None,
                limit: int | None = None, n_queries: int | None = None, gan_epochs: int | None = None,
                echo=print) -> dict:
    """Fit, encode and score every method at every code length on one dataset.
    ``limit`` keeps the first ``limit`` images (smoke runs)."""
    setup = DATASETS[name]
    x, labels = load_features(name, mnist_root)
    if limit is not None:
        x, labels = x[:limit], labels[:limit]
    db, queries = split(len(x), n_queries or setup.n_queries, seed)
    rows = []
    for bits in bits_list:
        for method in methods:
            kwargs = dict(setup.gan_kwargs) if method == "gan_hash" else {}
            if method == "gan_hash" and gan_epochs is not None:
                kwargs["epochs"] = gan_epochs
            encoder = create_encoder(method, bits=bits, seed=seed, **kwargs)
            start = time.perf_counter()
            encoder.fit(x[db])
            fit_s = time.perf_counter() - start
            start = time.perf_counter()
            db_codes, query_codes = encoder.encode(x[db]), encoder.encode(x[queries])
            encode_s = time.perf_counter() - start
            row = {"dataset": name, "bits": bits, "method": method, "label": LABELS.get(method, method),
                   "config": dict(encoder.config), "fit_s": fit_s, "encode_s": encode_s,
                   **score(query_codes, labels[queries], db_codes, labels[db], bits, setup.precision_k)}
            bit_means = np.unpackbits(db_codes, axis=1, count=bits, bitorder="little").mean(axis=0)
            row["bit_balance"] = {"min": float(bit_means.min()), "max": float(bit_means.max())}
            echo(f"[{name}] {bits:2d} bits {row['label']:12s} mAP {row['mAP']:.4f}  "
                 + "  ".join(f"P@{k} {row[f'P@{k}']:.4f}" for k in setup.precision_k) + f"  fit {fit_s:.1f} s")
            rows.append(row)
    return {"dataset": name, "description": setup.description, "features": int(x.shape[1]),
            "database": int(len(db)), "queries": int(len(queries)), "precision_k": list(setup.precision_k),
            "rows": rows}


def markdown(payload: dict) -> str:
    """One markdown table per metric: methods as rows, (dataset, bits) as columns."""
    results = payload["results"]
    columns = [(ds["dataset"], b) for ds in results for b in sorted({r["bits"] for r in ds["rows"]})]
    methods = list(dict.fromkeys(r["method"] for ds in results for r in ds["rows"]))
    cells = {(r["dataset"], r["bits"], r["method"]): r for ds in results for r in ds["rows"]}
    ks = sorted({k for ds in results for k in ds["precision_k"]})
    titles = {"mAP": "mAP over the whole Hamming ranking", "P@r2": "precision within Hamming radius 2"}
    lines = [f"Unsupervised hashing on raw pixels; labels used only for scoring. Total "
             f"{payload['total_s'] / 60:.1f} min on {payload['environment']['torch_threads']} thread(s).", ""]
    lines += [f"- **{ds['dataset']}**: {ds['description']}; {ds['database']} database (= training) images, "
              f"{ds['queries']} queries." for ds in results] + [""]
    for metric in ["mAP"] + [f"P@{k}" for k in ks] + ["P@r2"]:
        lines += [f"{titles.get(metric, metric + ' (flat index search)')}:", "",
                  "| method | " + " | ".join(f"{d} {b} bits" for d, b in columns) + " |",
                  "|---" * (1 + len(columns)) + "|"]
        for method in methods:
            row = [cells.get((d, b, method), {}).get(metric) for d, b in columns]
            lines.append(f"| {LABELS.get(method, method)} | "
                         + " | ".join("–" if v is None else f"{v:.4f}" for v in row) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_pr_curves(payload: dict, out_dir: Path) -> list[Path]:
    """One PNG per dataset: precision against recall of Hamming-radius retrieval, one panel per code length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for ds in payload["results"]:
        bits_list = sorted({r["bits"] for r in ds["rows"]})
        fig, axes = plt.subplots(1, len(bits_list), figsize=(4.2 * len(bits_list), 3.8), squeeze=False)
        for ax, bits in zip(axes[0], bits_list):
            for r in (r for r in ds["rows"] if r["bits"] == bits):
                ax.plot(r["curve"]["recall"], r["curve"]["precision"], marker=".", markersize=3, label=r["label"])
            ax.set(title=f"{ds['dataset']}, {bits} bits", xlabel="recall", ylabel="precision", xlim=(0, 1),
                   ylim=(0, 1.02))
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"unsupervised_pr_{ds['dataset']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def render(payload: dict, out_dir: Path) -> None:
    (out_dir / "unsupervised.md").write_text(markdown(payload))
    plot_pr_curves(payload, out_dir)


def run(datasets: list[str], methods: list[str], bits_list: list[int], out_dir: Path, *, seed: int = 0,
        threads: int | None = None, mnist_root: str | None = None, limit: int | None = None,
        n_queries: int | None = None, gan_epochs: int | None = None, echo=print) -> dict:
    """Run the comparison and write JSON, markdown and plots to ``out_dir``; returns the payload."""
    if threads:
        import faiss

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    start = time.perf_counter()
    results = [run_dataset(d, methods, bits_list, seed=seed, mnist_root=mnist_root, limit=limit, n_queries=n_queries,
                           gan_epochs=gan_epochs, echo=echo) for d in datasets]
    payload = {"benchmark": "unsupervised",
               "args": {"datasets": datasets, "methods": methods, "bits": bits_list, "seed": seed, "limit": limit,
                        "n_queries": n_queries, "gan_epochs": gan_epochs},
               "environment": environment(torch_threads=torch.get_num_threads()), "total_s": time.perf_counter() - start,
               "results": results}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "unsupervised.json").write_text(json.dumps(payload, indent=1))
    render(payload, out_dir)
    return payload


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=name_list(DATASETS, "dataset(s)"), default="mnist,digits",
                        help="comma-separated, from mnist, digits")
    parser.add_argument("--methods", type=name_list(METHODS, "method(s)"), default=",".join(METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--bits", default=",".join(map(str, BITS)), help="comma-separated code lengths")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch / Faiss threads (default: all cores)")
    parser.add_argument("--gan-epochs", type=int, default=None, help="default: per dataset (MNIST 20, digits 60)")
    parser.add_argument("--mnist-root", default=None, help="default: $HASHINDEX_MNIST or ../shared/data/mnist")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--render-only", action="store_true", help="redraw the table and plots from the JSON")
    args = parser.parse_args(argv)
    if args.render_only:
        payload = json.loads((args.out / "unsupervised.json").read_text())
        render(payload, args.out)
        return payload
    payload = run(args.datasets, args.methods, [int(b) for b in args.bits.split(",")], args.out, seed=args.seed,
                  threads=args.threads, mnist_root=args.mnist_root, gan_epochs=args.gan_epochs)
    print(markdown(payload))
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
