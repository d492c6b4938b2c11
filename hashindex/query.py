"""Saved-index jobs behind ``hashindex search`` and ``hashindex eval``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .evaluate import evaluate, evaluate_split
from .index import HashIndex
from .store import ShardReader


def _recorded(index: HashIndex, key: str, given, what: str) -> Path:
    if given is not None:
        return Path(given)
    if key not in index.metadata:
        raise ValueError(f"the index does not record its {what}; pass it explicitly")
    return Path(index.metadata[key])


def search_images(index_dir, query_images: "list[str | os.PathLike]", *, k: int = 8, model_path=None,
                  rerank: bool = False, candidates: int = 1000) -> list[dict]:
    """Encode ``query_images`` with the index's encoder, search, vote; one dict per query with its
    neighbours (id, distance, class, path) and voted class, or an ``error`` for an unreadable image."""
    from encoders import load_encoder
    from encoders.encode import encode_files

    index = HashIndex.load(index_dir)
    model = load_encoder(_recorded(index, "model", model_path, "encoder file (--model)"), bits=index.bits)
    codes, features, encoded, failed = encode_files(model, query_images)
    if rerank:
        D, I = index.search_rerank(codes, features, k=k, candidates=candidates)
        votes = index.vote(codes, k=k, features=features, candidates=candidates)
    else:
        D, I = index.search(codes, k=k)
        votes = index.vote(codes, k=k)
    paths = _paths_of(index, I)
    names = index.class_names

    def class_name(label: int) -> str:
        return names[label] if 0 <= label < len(names) else str(label)

    results: list[dict] = [{"query": os.fspath(p), "error": reason} for p, reason in failed]
    for row, position in enumerate(encoded):
        valid = I[row] >= 0
        labels = index.labels_of(I[row][valid])
        results.append({
            "query": os.fspath(query_images[position]),
            "voted_class": class_name(int(votes[row])) if votes[row] >= 0 else None,
            "neighbours": [
                {"id": int(i), "distance": float(d), "class": class_name(int(lab)), "path": paths.get(int(i), "")}
                for i, d, lab in zip(I[row][valid], D[row][valid], labels)
            ],
        })
    return results


def _paths_of(index: HashIndex, ids: np.ndarray) -> dict[int, str]:
    """Image paths of the given ids, from the shards the index was built from (if still there)."""
    shards = index.metadata.get("shards")
    if not shards or not Path(shards).is_dir():
        return {}
    data = ShardReader(shards).read(("ids", "paths"))
    wanted = set(int(i) for i in np.unique(ids) if i >= 0)
    root = index.metadata.get("image_root", "")
    return {int(i): os.path.join(root, p) for i, p in zip(data["ids"], data["paths"]) if int(i) in wanted}


def evaluate_index(index_dir, query_shards, *, database=None, k: int = 8, map_k: int | None = 1000,
                   unseen: "list[str] | None" = None) -> dict:
    """Score a saved index with labelled query shards; database codes for mAP come from the
    shards the index was built from unless ``database`` names others. mAP is named after the
    depth used: ``map_k``, or the database size when smaller. ``unseen`` (class names of the
    query shards) scores the queries of those classes and of the others apart:
    ``{"seen": figures, "unseen": figures}``."""
    index = HashIndex.load(index_dir)
    db = ShardReader(_recorded(index, "shards", database, "database shards (--database)")).read(("codes", "labels"))
    queries = ShardReader(query_shards)
    if queries.bits != index.bits:
        raise ValueError(f"{query_shards}: {queries.bits}-bit query codes for a {index.bits}-bit index")
    q = queries.read(("codes", "labels") + (("features",) if queries.feature_dim else ()))
    depth = None if map_k is None else min(map_k, len(db["codes"]))
    common = dict(k=k, map_k=depth, query_features=q.get("features"))
    if not unseen:
        return evaluate(index, q["codes"], q["labels"], db["codes"], db["labels"], **common)
    names = queries.class_names
    missing = [c for c in unseen if c not in names]
    if missing:
        raise ValueError(f"unseen class(es) {', '.join(missing)} not among the query classes: {', '.join(names)}")
    return evaluate_split(index, q["codes"], q["labels"], db["codes"], db["labels"],
                          [names.index(c) for c in unseen], **common)
