"""Real photos with a pretrained backbone: seen / unseen classes on augmented views of 20 photographs.

The 18 sample photographs shipped inside scikit-image and sklearn's 2 are one class each.
Every image of the benchmark is a random view of one of them (random resized crop of 25-100 %
of the area, horizontal flip, rotation within +-15 degrees, colour jitter, 128 x 128 px).
A *partition* holds 4 classes out as unseen: the encoder trains on views of the 16 seen
classes; the database and the queries hold fresh views of all 20; seen and unseen queries
are scored apart. The 20 classes (in a fixed shuffled order) make 5 disjoint partitions:
0-1 are for tuning defaults, 2-4 are reported (mean +- sd over them). Tuning partitions 5-7
cut a second shuffled order the same way (none holds out the unseen set of a report
partition): two partitions alone did not predict the report ones. Each partition draws its
views from its own seed.

Each method trains as a user would: ``hashindex train`` in a subprocess at default flags
(the seed apart, and ``--epochs`` only when given below), so that its wall time, images/s
and peak memory (``VmHWM``, the kernel's peak RSS of that process) are its own. ITQ on the
frozen backbone features is the baseline to beat. Codes are then encoded in-process and searched in a flat index, the
database in a seeded random order (Hamming ties go to the lower position).

    python benchmarks/photos.py                         # report partitions, every method
    python benchmarks/photos.py --split tuning --methods dlbhc --train-args "--backbone-lr-scale 1"

Needs scikit-image (``pip install hashindex[bench]``). Writes ``benchmarks/results/photos.json``
and ``photos.md`` (``--name`` changes the file names).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from encoders import load_encoder
from encoders.encode import encode_folder
from hashindex.bench.args import name_list
from hashindex.code_health import code_health
from hashapp.evaluate import evaluate_split
from hashindex.index import HashIndex
from hashindex.store import ShardReader

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BACKBONE = "efficientnet_lite0"
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cat", "cell", "clock", "coffee", "coins", "grass", "gravel",
                  "hubble_deep_field", "immunohistochemistry", "moon", "motorcycle", "page", "retina", "rocket",
                  "text")
SKLEARN_PHOTOS = ("china", "flower")
UNSEEN_PER_PARTITION = 4
#: Partitions are cuts of shuffled class orders: 0-4 of the first (seed 0), 5-7 of a second (seed 1).
ORDER_SEEDS = {0: range(0, 5), 1: range(5, 8)}
PARTITIONS = 8
SPLITS = {"tuning": (0, 1, 5, 6, 7), "report": (2, 3, 4)}
#: Supervised methods train with ``hashindex train``; ``itq`` is fitted on the frozen features.
METHODS = {"dlbhc": "DLBHC", "hashnet": "HashNet", "bilinear_hashnet": "Bilinear-HashNet",
           "itq": "ITQ (frozen features)"}
MAP_K = 100
VOTE_K = 8


def load_photos() -> dict[str, "object"]:
    """The 20 photographs as RGB PIL images, by name."""
    try:
        from skimage import data
    except ImportError as exc:
        raise ImportError("the photo benchmark needs scikit-image: pip install 'hashindex[bench]'") from exc
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = {}
    for name in SKIMAGE_PHOTOS:
        array = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
        photos[name] = Image.fromarray(np.asarray(array, dtype=np.uint8)).convert("RGB")
    sample = load_sample_images()
    for name, array in zip(SKLEARN_PHOTOS, sample.images):
        photos[name] = Image.fromarray(array).convert("RGB")
    return photos


def view_transform(size: int = 128):
    """One random view: crop of 25-100 % of the area, flip, +-15 degrees, colour jitter."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomRotation(15),
        transforms.RandomResizedCrop(size, scale=(0.25, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05),
    ])


def partition_classes(partition: int, names: list[str]) -> tuple[list[str], list[str]]:
    """(seen, unseen) class names of ``partition``: a cut of 4 classes of its seeded shuffled order."""
    seed, cuts = next((seed, cuts) for seed, cuts in ORDER_SEEDS.items() if partition in cuts)
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    start = (partition - cuts.start) * UNSEEN_PER_PARTITION
    unseen = order[start:start + UNSEEN_PER_PARTITION]
    if partition not in SPLITS["report"]:
        # A tuning partition holding out a report partition's classes would tune on reported figures.
        assert all(set(unseen) != set(partition_classes(r, names)[1]) for r in SPLITS["report"]), partition
    return [n for n in names if n not in unseen], unseen


def write_views(photos: dict, classes: list[str], per_class: int, folder: Path, size: int, prefix: str) -> Path:
    """``per_class`` random views of each photo in ``classes`` as ``folder/<class>/<prefix><i>.png``
    (the global torch seed decides them)."""
    make_view = view_transform(size)
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_view(photos[name]).save(folder / name / f"{prefix}{i:03d}.png")
    return folder


def make_partition(photos: dict, partition: int, root: Path, *, train: int, database: int, queries: int,
                   size: int) -> dict:
    names = sorted(photos)
    seen, unseen = partition_classes(partition, names)
    torch.manual_seed(1000 + partition)
    return {"seen": seen, "unseen": unseen, "folders": {
        "train": write_views(photos, seen, train, root / "train", size, "t"),
        "database": write_views(photos, names, database, root / "database", size, "d"),
        "queries": write_views(photos, names, queries, root / "queries", size, "q"),
    }}


#: Runs ``hashindex`` and, at exit, writes its peak RSS (``VmHWM``, kB) to $HASHINDEX_PEAK_FILE. The
#: rusage of a child is no good here: Linux counts in it the RSS its parent had when it forked.
_CLI_WITH_PEAK = """
import atexit, os, sys

def write_peak():
    with open("/proc/self/status") as status:
        kb = next(line for line in status if line.startswith("VmHWM")).split()[1]
    with open(os.environ["HASHINDEX_PEAK_FILE"], "w") as out:
        out.write(kb)

atexit.register(write_peak)
from hashapp.cli import main
sys.argv[0] = "hashindex"
main()
"""


def train_subprocess(method: str, train_dir: Path, out: Path, *, epochs: int | None, seed: int, threads: int,
                     device: str, extra_args: list[str], backbone: str = BACKBONE) -> dict:
    """Run ``hashindex train`` in a child process: its wall time and peak RSS (Linux only, else ``None``)."""
    cmd = [sys.executable, "-c", _CLI_WITH_PEAK, "--threads", str(threads), "train", str(train_dir), "--out",
           str(out), "--method", method, "--backbone", backbone, "--seed", str(seed), "--device", device]
    if method != "itq":
        cmd += ([] if epochs is None else ["--epochs", str(epochs)]) + extra_args
    peak_file = out.with_suffix(".peak")
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
                               "HASHINDEX_PEAK_FILE": str(peak_file)})
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"hashindex train ({method}) failed:\n{proc.stdout[-3000:]}")
    peak = int(peak_file.read_text()) / 1e6 if peak_file.exists() else None
    return {"train_s": wall, "peak_rss_gb": peak, "log": proc.stdout[-2000:]}


def score_method(model_path: Path, folders: dict, work: Path, unseen: list[str], seed: int, device: str) -> dict:
    """Encode database and queries with the model; seen and unseen figures, database code health."""
    model = load_encoder(model_path)
    start = time.perf_counter()
    db_dir, q_dir = work / f"{model_path.stem}-db", work / f"{model_path.stem}-q"
    encode_folder(model, folders["database"], db_dir, device=device, progress=False)
    encode_folder(model, folders["queries"], q_dir, device=device, progress=False)
    encode_s = time.perf_counter() - start
    db = ShardReader(db_dir).read(("codes", "labels", "features", "ids"))
    order = np.random.default_rng(seed).permutation(len(db["codes"]))
    db = {k: v[order] for k, v in db.items()}
    index = HashIndex(bits=model.bits, spec="flat")
    index.add(db["codes"], labels=db["labels"], features=db["features"], ids=db["ids"])
    q = ShardReader(q_dir).read(("codes", "labels", "features"))
    names = ShardReader(q_dir).class_names
    row = {"encode_s": encode_s, "encode_images_per_s": (len(db["codes"]) + len(q["codes"])) / encode_s,
           "database_health": code_health(db["codes"], model.bits).as_dict()}
    split = evaluate_split(index, q["codes"], q["labels"], db["codes"], db["labels"], [names.index(c) for c in unseen],
                           k=VOTE_K, map_k=MAP_K, query_features=q["features"])
    for part, figures in split.items():
        row[part] = {"mAP@100": figures[f"mAP@{MAP_K}"], "P@8": figures[f"P@{VOTE_K}"],
                     "vote@8": figures["vote_accuracy"], "rerank_vote@8": figures.get("rerank_vote_accuracy")}
    return row


def run_partition(photos: dict, partition: int, methods: list[str], args, echo=print) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        tmp = Path(tmp)
        part = make_partition(photos, partition, tmp, train=args.train_views, database=args.database_views,
                              queries=args.query_views, size=args.size)
        n_train = args.train_views * len(part["seen"])
        for method in methods:
            model_path = tmp / f"{method}.pt"
            trained = train_subprocess(method, part["folders"]["train"], model_path, epochs=args.epochs,
                                       seed=args.seed, threads=args.threads, device=args.device,
                                       extra_args=shlex.split(args.train_args), backbone=args.backbone)
            extra = torch.load(model_path, weights_only=True)["extra"]
            images_seen = n_train * (1 if method == "itq" else len(extra["history"]))  # one record per epoch run
            row = {"partition": partition, "method": method, "unseen_classes": part["unseen"],
                   "train_s": trained["train_s"], "train_images_per_s": images_seen / trained["train_s"],
                   "peak_rss_gb": trained["peak_rss_gb"], "train_config": extra.get("train_config"),
                   "train_health": extra.get("code_health"),
                   **score_method(model_path, part["folders"], tmp, part["unseen"], args.seed,
                                  args.device)}
            echo(f"[partition {partition}] {METHODS[method]}: seen mAP@100 {row['seen']['mAP@100']:.3f}, unseen "
                 f"mAP@100 {row['unseen']['mAP@100']:.3f}, unseen vote@8 {row['unseen']['vote@8']:.2f}, distinct "
                 f"{row['database_health']['distinct_fraction']:.0%}, train {row['train_s']:.0f} s, peak "
                 f"{row['peak_rss_gb'] or float('nan'):.2f} GB")
            rows.append(row)
    return rows


#: (column, row key path, format) of the summary table.
COLUMNS = (("seen mAP@100", ("seen", "mAP@100")), ("seen vote@8", ("seen", "vote@8")),
           ("unseen mAP@100", ("unseen", "mAP@100")), ("unseen vote@8", ("unseen", "vote@8")),
           ("unseen vote@8, F7 rerank", ("unseen", "rerank_vote@8")),
           ("distinct codes (database)", ("database_health", "distinct_fraction")),
           ("train s", ("train_s",)), ("train images/s", ("train_images_per_s",)), ("peak RSS GB", ("peak_rss_gb",)),
           ("encode images/s", ("encode_images_per_s",)))


def _get(row: dict, path: tuple) -> float:
    for key in path:
        row = row[key]
    return float(row)


def summarise(rows: list[dict], methods: list[str]) -> dict:
    """Mean and sd over partitions of every column, per method."""
    out = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        out[method] = {}
        for column, path in COLUMNS:
            values = [_get(r, path) for r in mine if _get_or_none(r, path) is not None]
            if values:
                out[method][column] = {"mean": statistics.fmean(values),
                                       "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def _get_or_none(row: dict, path: tuple):
    for key in path:
        if row is None or key not in row:
            return None
        row = row[key]
    return row


def markdown_table(summary: dict) -> str:
    header = "| method | " + " | ".join(c for c, _ in COLUMNS) + " |"
    lines = [header, "|---" * (len(COLUMNS) + 1) + "|"]
    for method, cols in summary.items():
        cells = []
        for column, _ in COLUMNS:
            v = cols.get(column)
            digits = 0 if column.startswith("train s") else (1 if "/s" in column else (2 if "GB" in column else 3))
            cells.append("n/a" if v is None else f"{v['mean']:.{digits}f} ± {v['sd']:.{digits}f}")
        lines.append(f"| {METHODS[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(rows: list[dict], methods: list[str], partitions: list[int], args, total_s: float):
    """Write the JSON and markdown of the partitions done so far (a cut-short run keeps them)."""
    summary = summarise(rows, methods)
    done = sorted({r["partition"] for r in rows})
    payload = {"benchmark": "photos", "args": {k: str(v) for k, v in vars(args).items()},
               "partitions": partitions, "partitions_done": done, "environment": {
                   "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
                   "cpu_count": os.cpu_count(), "torch_threads": args.threads, "cuda": torch.cuda.is_available(),
                   "load_average_at_end": os.getloadavg()},
               "total_s": total_s, "summary": summary, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(payload, indent=2, default=float))
    table = markdown_table(summary)
    (args.out / f"{args.name}.md").write_text(
        f"Photo benchmark, partitions {done} of {partitions}: {args.train_views} training views per seen class "
        f"(16 classes), {args.database_views} database and {args.query_views} query views per class (20 classes), "
        f"{args.size} px, {args.backbone} (EfficientNet-Lite0: 224 px input), 64-bit codes, "
        f"{'default epochs (step budget)' if args.epochs is None else f'{args.epochs} epochs'}, default flags"
        f"{' + ' + args.train_args if args.train_args else ''}; mean ± sd over partitions; total "
        f"{total_s / 60:.1f} min on {args.threads} thread(s), load average at the end "
        f"{os.getloadavg()[0]:.1f}.\n\n" + table)
    return payload, table


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=sorted(SPLITS), default="report")
    parser.add_argument("--partitions", default=None, help="comma-separated partition numbers (overrides --split)")
    parser.add_argument("--methods", type=name_list(METHODS, "method(s)"), default=",".join(METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--epochs", type=int, default=None,
                        help="passed to `hashindex train` [default: its own, the pretrained step budget]")
    parser.add_argument("--train-views", type=int, default=40, help="training views per seen class")
    parser.add_argument("--database-views", type=int, default=15, help="database views per class")
    parser.add_argument("--query-views", type=int, default=5, help="query views per class")
    parser.add_argument("--size", type=int, default=128, help="side of a view in px")
    parser.add_argument("--backbone", default=BACKBONE, help="(another backbone: for smoke tests)")
    parser.add_argument("--train-args", default="", help="extra `hashindex train` flags for supervised methods")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="photos", help="file names of the results")
    args = parser.parse_args(argv)
    partitions = ([int(p) for p in args.partitions.split(",")] if args.partitions else list(SPLITS[args.split]))
    if not set(partitions) <= set(range(PARTITIONS)):
        parser.error(f"--partitions: numbers from 0 to {PARTITIONS - 1}, got {args.partitions}")
    torch.set_num_threads(args.threads)
    photos = load_photos()
    start = time.perf_counter()
    rows: list[dict] = []
    for partition in partitions:
        rows += run_partition(photos, partition, args.methods, args)
        payload, table = write_results(rows, args.methods, partitions, args, time.perf_counter() - start)
    print(table)
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
