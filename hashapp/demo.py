"""The end-to-end demo on sklearn's embedded digits: folder -> train -> shards -> index -> search -> vote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from encoders import load_encoder
from encoders.encode import encode_folder
from encoders.training import TrainConfig

from hashindex.datasets import load_digits_images, write_image_folder
from hashindex.store import ShardReader

from .evaluate import evaluate, single_query_latency
from .pipeline import build
from .viz import neighbour_grid

QUERY_FRACTION = 0.2


def split_per_class(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: ``fraction`` of each class (at least one) as queries; (database, query) rows."""
    rng = np.random.default_rng(seed)
    query = []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        query.extend(rows[: max(1, int(round(fraction * len(rows))))])
    query = np.sort(np.array(query))
    return np.setdiff1d(np.arange(len(labels)), query), query


def run_demo(out: "str | Path" = "demo-output", *, epochs: int = 8, bits: int = 64, seed: int = 0,
             progress: bool = True, echo: Callable[[str], None] = print) -> dict:
    """Run the whole job on the digits and return its figures (also written to ``out/results.json``)."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    images, labels = load_digits_images(size=32)
    db_rows, query_rows = split_per_class(labels, QUERY_FRACTION, seed)
    db_dir = write_image_folder(images[db_rows], labels[db_rows], out / "digits" / "database")
    query_dir = write_image_folder(images[query_rows], labels[query_rows], out / "digits" / "queries", prefix="q")
    echo(f"wrote {len(db_rows)} database and {len(query_rows)} query digit images under {out / 'digits'}")

    result = build(db_dir, out / "build", method="dlbhc", backbone="small_cnn", bits=bits, spec="flat",
                   config=TrainConfig(epochs=epochs, batch_size=64, lr=1e-3, seed=seed), progress=progress)
    echo(f"trained {result.model_path}, indexed {len(result.index)} codes into {result.index_dir}")
    model = load_encoder(result.model_path)
    encode_folder(model, query_dir, out / "build" / "query-shards", progress=progress)
    db = ShardReader(result.shards_dir).read(("codes", "labels", "ids", "paths"))
    queries = ShardReader(out / "build" / "query-shards").read(("codes", "labels", "features", "paths"))

    index = result.index
    figures = evaluate(index, queries["codes"], queries["labels"], db["codes"], db["labels"], k=8, map_k=1000,
                       query_features=queries["features"])
    figures["single_query_latency"] = single_query_latency(index, queries["codes"], k=8)
    figures["picture"] = str(_save_picture(index, queries, db, query_dir, db_dir, out / "neighbours.png"))
    (out / "results.json").write_text(json.dumps(figures, indent=2))

    echo("")
    echo(f"{figures['queries']} queries against {figures['database']} codes, {bits}-bit, spec {figures['spec']}")
    echo(f"  mAP@1000            {figures['mAP@1000']:.4f}")
    echo(f"  P@8                 {figures['P@8']:.4f}   (after F7 rerank: {figures['rerank_P@8']:.4f})")
    echo(f"  top-1 vote accuracy {figures['vote_accuracy']:.4f}   (after F7 rerank: {figures['rerank_vote_accuracy']:.4f})")
    echo(f"  P within radius 2   {figures['P@r2']:.4f}")
    latency = figures["single_query_latency"]
    echo(f"  latency             {latency['median_ms']:.3f} ms median, {latency['p99_ms']:.3f} ms p99 per single query"
         f"; {figures['search_ms_per_query_batched'] * 1000:.1f} us per query batched")
    echo(f"picture: {figures['picture']}   figures: {out / 'results.json'}")
    return figures


def _save_picture(index, queries, db, query_dir: Path, db_dir: Path, path: Path, n: int = 8) -> Path:
    from PIL import Image

    # One query per class (the first n classes) makes a varied picture.
    rows = [int(np.flatnonzero(queries["labels"] == c)[0]) for c in np.unique(queries["labels"])[:n]]
    _, ids = index.search(queries["codes"][rows], k=8)
    id_to_row = {int(i): r for r, i in enumerate(db["ids"])}

    def load(root: Path, rel: str) -> np.ndarray:
        return np.asarray(Image.open(root / rel).convert("L"))

    neighbour_images, neighbour_labels = [], []
    for row_ids in ids:
        found = [id_to_row[int(i)] for i in row_ids if i >= 0]
        neighbour_images.append([load(db_dir, db["paths"][r]) for r in found])
        neighbour_labels.append([int(db["labels"][r]) for r in found])
    return neighbour_grid([load(query_dir, queries["paths"][r]) for r in rows],
                          [int(queries["labels"][r]) for r in rows], neighbour_images, neighbour_labels, path,
                          class_names=index.class_names)
