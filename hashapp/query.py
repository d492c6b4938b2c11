"""Saved-index jobs behind ``hashindex search`` and ``hashindex eval``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hashindex.index import HashIndex
from hashindex.store import ShardReader, read_store_info
from hashindex.vote import majority_vote

from .evaluate import evaluate, evaluate_split


def recorded(index: HashIndex, key: str, given, what: str) -> Path:
    if given is not None:
        return Path(given)
    if key not in index.metadata:
        raise ValueError(f"the index does not record its {what}; pass it explicitly")
    return Path(index.metadata[key])


def load_index_model(index: HashIndex, model_path, where: str):
    """The encoder that made ``index``'s codes (``model_path``, or the file the index records);
    ``ValueError`` if the index records another model's identity (``where`` names the index)."""
    from encoders import load_encoder
    from encoders.checkpoint import check_made_by

    model = load_encoder(recorded(index, "model", model_path, "encoder file (--model)"), bits=index.bits)
    check_made_by(model, index.metadata, where)
    return model


def search_images(index_dir, query_images: "list[str | os.PathLike]", *, k: int = 8, model_path=None,
                  rerank: bool | None = None, candidates: int = 1000, labels=None) -> list[dict]:
    """Encode ``query_images`` with the index's encoder, search, vote; one dict per query (see
    :func:`query_results`), or ``{"query", "error"}`` for an unreadable image. ``labels``
    (class names or ints) restricts the neighbours to those classes. ``rerank=None`` reranks by
    F7 whenever the index holds features."""
    from encoders.encode import encode_files

    index = HashIndex.load(index_dir)
    model = load_index_model(index, model_path, f"index {index_dir}")
    codes, features, encoded, failed = encode_files(model, query_images)
    if rerank is None:
        rerank = index.feature_dim is not None
    results: list[dict] = [{"query": os.fspath(p), "error": reason} for p, reason in failed]
    names = [os.fspath(query_images[position]) for position in encoded]
    return results + query_results(index, PathLookup(index), names, codes, features if rerank else None,
                                   k=k, candidates=candidates, labels=labels)


def query_results(index: HashIndex, paths: "PathLookup", names: list[str], codes: np.ndarray,
                  features: np.ndarray | None = None, *, k: int = 8, candidates: int = 1000,
                  labels=None) -> list[dict]:
    """Search and vote for encoded queries: per query ``{"query", "voted_class", "distance_kind",
    "neighbours": [{"id", "distance", "class", "path"}]}``. With ``features`` the neighbours are
    reranked by Euclidean distance on F7 (float distances, ``distance_kind`` "euclidean"),
    otherwise Hamming (integer distances)."""
    if features is not None:
        D, I = index.search_rerank(codes, features, k=k, candidates=candidates, labels=labels)
    else:
        D, I = index.search(codes, k=k, labels=labels)
    votes = majority_vote(index.labels_of(I))  # what index.vote gives, without searching again
    path_of = paths.lookup(I)
    kind, as_number = ("euclidean", float) if features is not None else ("hamming", int)
    results = []
    for row, name in enumerate(names):
        valid = I[row] >= 0
        results.append({
            "query": name,
            "voted_class": class_name(index, int(votes[row])) if votes[row] >= 0 else None,
            "distance_kind": kind,
            "neighbours": [
                {"id": int(i), "distance": as_number(d), "class": class_name(index, int(lab)),
                 "path": path_of.get(int(i), "")}
                for i, d, lab in zip(I[row][valid], D[row][valid], index.labels_of(I[row][valid]))
            ],
        })
    return results


def class_name(index: HashIndex, label: int) -> str:
    """The class name of a label (the number itself for a label without a name)."""
    names = index.class_names
    return names[label] if 0 <= label < len(names) else str(label)


class PathLookup:
    """Image paths of ids, read from the shard store the index was built from (if still there).

    Only the shards whose id range holds a wanted id are read, and each is read once per
    lookup object (shards never change once written); a shard appended later (``hashindex add``)
    is found by re-reading the manifest.
    """

    def __init__(self, index: HashIndex) -> None:
        store = index.metadata.get("shards")
        self.store = Path(store) if store and Path(store).is_dir() else None
        self.root = index.metadata.get("image_root", "")
        self._shards: dict[str, dict[int, str]] = {}
        self._hashes: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # per shard: path hashes, ids
        self._entries: list[dict] = []

    def lookup(self, ids: np.ndarray) -> dict[int, str]:
        """``{id: path}`` for the stored ids among ``ids`` (``-1`` and unknown ids left out)."""
        wanted = {int(i) for i in np.unique(ids) if i >= 0}
        if self.store is None or not wanted:
            return {}
        found = self._from_shards(wanted)
        if len(found) < len(wanted):  # maybe in a shard added since the manifest was read
            self._entries = read_store_info(self.store).shards
            found = self._from_shards(wanted)
        return found

    def stored_ids(self, paths: "list[str]", live_ids: np.ndarray) -> dict[str, int]:
        """``{path: id}`` for the paths among ``paths`` that the store holds under an id still in
        ``live_ids`` (the index's ids: a removed image may be added again). A path matches as
        given (absolute) or with symlinks resolved, also where the store holds it relative to the
        image root. Every shard's paths are read once per lookup object and kept as 64-bit
        hashes (16 bytes a record); a hash hit is confirmed against the stored path."""
        if self.store is None or not paths:
            return {}
        absolute = {path: {os.path.abspath(path), os.path.realpath(path)} for path in paths}
        by_hash: dict[int, list[str]] = {}
        prefix = os.path.join(self.root, "") if self.root else None
        for path, forms in absolute.items():
            spellings = forms | {os.path.relpath(f, self.root) for f in forms if prefix and f.startswith(prefix)}
            for spelling in spellings:
                by_hash.setdefault(hash(spelling), []).append(path)
        wanted = np.fromiter(by_hash, np.int64, len(by_hash))
        self._entries = read_store_info(self.store).shards
        hits = []
        for entry in self._entries:
            hashes, ids = self._path_hashes(entry["file"])  # sorted by hash
            lo, hi = np.searchsorted(hashes, wanted, "left"), np.searchsorted(hashes, wanted, "right")
            hits.extend((int(h), int(ids[j])) for h, a, b in zip(wanted, lo, hi) for j in range(a, b))
        hit_ids = np.array([i for _, i in hits], dtype=np.int64)
        stored = self.lookup(hit_ids[np.isin(hit_ids, live_ids)])
        return {path: i for h, i in hits if i in stored for path in by_hash[h] if stored[i] in absolute[path]}

    def _path_hashes(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._hashes:
            shard = ShardReader(self.store, files=[name]).read_shard(self.store / name, fields=("ids", "paths"))
            hashes = np.fromiter(map(hash, shard.paths or []), np.int64, len(shard.paths or []))
            order = np.argsort(hashes)
            self._hashes[name] = hashes[order], (shard.ids[order] if shard.paths else np.empty(0, np.int64))
        return self._hashes[name]

    def _from_shards(self, wanted: set[int]) -> dict[int, str]:
        found = {}
        for entry in self._entries:
            if any(entry["first_id"] <= i <= entry.get("last_id", entry["first_id"] + entry["count"] - 1)
                   for i in wanted):
                table = self._shard(entry["file"])
                found.update((i, table[i]) for i in wanted if i in table)
        return found

    def _shard(self, name: str) -> dict[int, str]:
        if name not in self._shards:
            shard = ShardReader(self.store, files=[name]).read_shard(self.store / name, fields=("ids", "paths"))
            paths = shard.paths or [""] * len(shard.ids)
            self._shards[name] = {int(i): os.path.join(self.root, p) for i, p in zip(shard.ids, paths)}
        return self._shards[name]


def evaluate_index(index_dir, query_shards, *, database=None, k: int = 8, map_k: int | None = 1000,
                   unseen: "list[str] | None" = None) -> dict:
    """Score a saved index with labelled query shards; database codes for mAP come from the
    shards the index was built from unless ``database`` names others. mAP is named after the
    depth used: ``map_k``, or the database size when smaller. ``unseen`` (class names of the
    query shards) scores the queries of those classes and of the others apart:
    ``{"seen": figures, "unseen": figures}``."""
    index = HashIndex.load(index_dir)
    db = ShardReader(recorded(index, "shards", database, "database shards (--database)")).read(("codes", "labels"))
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
