"""``HashIndex``: a Faiss binary index with labels, F7 features and ids kept alongside."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import faiss
import h5py
import numpy as np

from ._io import fsync_path, int_column, replace_durably, write_json_atomic
from .autotune import TRAIN_CODES_PER_LIST
from .codes import MISSING_DISTANCE, as_packed_codes, check_bits
from .gpu import DevicePlacement
from .rerank import rerank_euclidean
from .spec import IndexSpec, apply_search_params, padded_bits, parse_spec
from .store import ShardReader
from .vote import majority_vote

INDEX_FORMAT = "hashindex-index"
INDEX_FORMAT_VERSION = 1
_CURRENT = "CURRENT"


class HashIndex:
    """Hamming kNN over ``bits``-bit codes, backed by the Faiss index named by ``spec``.

    Rows are stored in insertion order; Faiss sees row numbers and ``HashIndex``
    maps them to the caller's ids, labels (``-1`` = unlabelled) and optional
    real-valued features (for :meth:`search_rerank`). Keeping the row as the Faiss
    id lets labels and features be looked up by plain indexing, which is what an
    ``IndexBinaryIDMap`` would otherwise need a second id-to-row map for.

    >>> index = HashIndex(bits=64, spec="flat")
    >>> index.add(codes, labels=labels)          # doctest: +SKIP
    >>> D, I = index.search(queries, k=8)        # doctest: +SKIP

    Codes whose width has no fast Faiss Hamming kernel (48, 80, 96 bits, ...) are stored
    zero-padded to the next fast width (``faiss_bits``, see :func:`~hashindex.spec.padded_bits`;
    ``pad=False`` turns this off). Callers still pass and get ``bits``-bit codes; zero bytes
    change no Hamming distance. ``spec="auto"`` is resolved at the first :meth:`add`
    (:mod:`hashindex.autotune`).
    """

    def __init__(self, bits: int = 64, spec: "str | IndexSpec" = "flat", class_names=None,
                 metadata: dict | None = None, device: str = "cpu", pad: bool = True) -> None:
        self.bits = check_bits(bits)
        self.spec = parse_spec(spec)
        self.class_names: list[str] = list(class_names or [])
        #: Free-form JSON-able provenance saved with the index (e.g. source shards, encoder file).
        self.metadata: dict = dict(metadata or {})
        #: Width of the codes inside the Faiss index (``bits`` plus zero padding).
        self.faiss_bits = padded_bits(self.bits) if pad else self.bits
        if self.spec.kind == "MultiHash" and self.spec.args[0] * self.spec.args[1] > self.bits:
            self.spec.build(self.bits)  # raises: the tables must fit the caller's width, not the padded one
        self._auto_request = self.spec if self.spec.kind == "auto" else None
        self._index = (IndexSpec("flat") if self._auto_request else self.spec).build(self.faiss_bits)
        #: Where kNN searches run: ``device`` is "cpu", "gpu" or "auto" (see :mod:`hashindex.gpu`).
        self._placement = DevicePlacement(device)
        self._labels = np.empty(0, dtype=np.int64)
        self._ids = np.empty(0, dtype=np.int64)
        self._ids_are_rows = True
        self._feature_chunks: list[np.ndarray] = []

    # ------------------------------------------------------------------ state
    def __len__(self) -> int:
        return self._ids.shape[0]  # kept equal to the Faiss ntotal, and cheaper to read per query

    @property
    def ntotal(self) -> int:
        return len(self)

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def features(self) -> np.ndarray | None:
        """Stored features, ``(ntotal, d)``, or None if the index holds none."""
        if len(self._feature_chunks) > 1:
            self._feature_chunks = [np.concatenate(self._feature_chunks)]
        return self._feature_chunks[0] if self._feature_chunks else None

    @property
    def feature_dim(self) -> int | None:
        return self._feature_chunks[0].shape[1] if self._feature_chunks else None

    @property
    def faiss_index(self) -> faiss.IndexBinary:
        """The underlying Faiss index (rows as ids, codes zero-padded to ``faiss_bits``)."""
        return self._index

    def _faiss_codes(self, packed: np.ndarray) -> np.ndarray:
        """Packed ``bits``-bit codes zero-padded to ``faiss_bits`` (already padded ones pass)."""
        width = self.faiss_bits // 8
        if packed.shape[1] == width:
            return packed
        out = np.zeros((len(packed), width), dtype=np.uint8)
        out[:, : packed.shape[1]] = packed
        return out

    @property
    def device(self) -> str:
        """The device kNN searches really run on: ``"cpu"`` or ``"gpu"`` (after any fallback)."""
        return self._placement.device

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    def set_search_params(self, **params: int) -> None:
        """Change search parameters (``nprobe``, ``efSearch``, ``nflip``) in place."""
        spec = parse_spec(",".join([str(IndexSpec(self.spec.kind, self.spec.args))] +
                                   [f"{k}={v}" for k, v in {**self.spec.params, **params}.items()]))
        apply_search_params(self._index, spec.kind, spec.params)
        self.spec = spec

    def __repr__(self) -> str:
        feats = f", features={self.feature_dim}" if self.feature_dim else ""
        return f"HashIndex(bits={self.bits}, spec={str(self.spec)!r}, ntotal={len(self)}{feats})"

    # ------------------------------------------------------------------ building
    def train(self, codes) -> None:
        """Train the index (IVF: k-means of the coarse quantiser) on a sample of ``codes``."""
        packed = as_packed_codes(codes, self.bits)
        if not self.spec.needs_training:
            return
        nlist = self.spec.args[0]
        if len(packed) < nlist:
            raise ValueError(f"spec {self.spec} needs at least {nlist} codes to train, got {len(packed)}")
        limit = TRAIN_CODES_PER_LIST * nlist
        if len(packed) > limit:
            rows = np.random.default_rng(0).choice(len(packed), limit, replace=False)
            packed = packed[np.sort(rows)]
        self._index.train(self._faiss_codes(packed))

    def add(self, codes, labels=None, features=None, ids=None) -> None:
        """Add codes with optional labels (int, ``-1`` = none), features ``(n, d)`` and ids.

        Ids default to consecutive numbers after the largest id present; given ids
        must be unique. An untrained IVF index is trained on the first batch.
        """
        packed = as_packed_codes(codes, self.bits)
        n = len(packed)
        labels = int_column(labels, n, "labels", default=-1)
        ids = self._new_ids(ids, n)
        feats = self._check_new_features(features, n)
        if n == 0:
            return
        if self._auto_request is not None:
            self._resolve_auto(packed)
        else:
            if not self.is_trained:
                self.train(packed)
            self._index.add(self._faiss_codes(packed))
        self._labels = np.concatenate([self._labels, labels])
        self._ids_are_rows = self._ids_are_rows and bool(np.array_equal(ids, np.arange(len(self._ids), len(self._ids) + n)))
        self._ids = np.concatenate([self._ids, ids])
        if feats is not None:
            self._feature_chunks.append(feats)

    def _resolve_auto(self, packed: np.ndarray) -> None:
        """Replace the ``auto`` request by the index it picks for this first batch (which it holds)."""
        from .autotune import build_auto

        choice = build_auto(self._faiss_codes(packed), self.faiss_bits, self._auto_request.params)
        self._index, self.spec, self._auto_request = choice.index, choice.spec, None
        self.metadata["auto"] = choice.report

    def _new_ids(self, ids, n: int) -> np.ndarray:
        if ids is None:
            start = int(self._ids.max()) + 1 if len(self._ids) else 0
            return np.arange(start, start + n, dtype=np.int64)
        ids = int_column(ids, n, "ids")
        if n and ids.min() < 0:
            raise ValueError("ids must be non-negative (-1 marks a missing neighbour)")
        increasing = n < 2 or bool(np.all(ids[1:] > ids[:-1]))
        if increasing and (not len(self._ids) or not n or ids[0] > self._ids.max()):
            return ids
        both = np.concatenate([self._ids, ids])
        values, counts = np.unique(both, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"duplicate ids, e.g. {values[counts > 1][:5].tolist()}")
        return ids

    def _check_new_features(self, features, n: int) -> np.ndarray | None:
        have = self.feature_dim
        if features is None:
            if have is not None:
                raise ValueError(f"this index stores features (dim {have}); pass features for every add")
            return None
        feats = np.asarray(features)
        if feats.ndim != 2 or feats.shape[0] != n:
            raise ValueError(f"features: expected shape ({n}, d), got {feats.shape}")
        if have is None and len(self):
            raise ValueError("this index was built without features; cannot add features now")
        if have is not None and feats.shape[1] != have:
            raise ValueError(f"features: expected dim {have}, got {feats.shape[1]}")
        _check_real(feats, "features")
        if feats.dtype not in (np.float16, np.float32):
            feats = feats.astype(np.float32)
        if not np.all(np.isfinite(feats)):
            raise ValueError("features contain NaN or infinite values")
        return feats

    @classmethod
    def from_shards(cls, directory, spec: "str | IndexSpec" = "flat", *, features: bool = True,
                    progress: bool = True, device: str = "cpu") -> "HashIndex":
        """Load every shard of a store (codes, labels, ids and, if stored, features)."""
        reader = ShardReader(directory)
        fields = ["codes", "labels", "ids"] + (["features"] if features and reader.feature_dim else [])
        data = reader.read(fields, progress=progress)
        index = cls(bits=reader.bits, spec=spec, class_names=reader.class_names,
                    metadata={**reader.info.metadata, "shards": str(Path(directory).resolve())}, device=device)
        index.add(data["codes"], labels=data["labels"], features=data.get("features"), ids=data["ids"])
        return index

    # ------------------------------------------------------------------ search
    def _check_queries(self, codes, k: int) -> np.ndarray:
        if not (type(k) is int or isinstance(k, np.integer)) or k <= 0:  # type(): bools are refused
            raise ValueError(f"k must be a positive integer, got {k!r}")
        return as_packed_codes(codes, self.bits, name="query codes")

    def _search_rows(self, packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Hamming kNN returning Faiss rows (not ids); padding normalised to -1 / MISSING_DISTANCE."""
        k = int(k)  # Faiss's SWIG wrapper rejects numpy integers
        if len(self) == 0 or len(packed) == 0:
            return (np.full((len(packed), k), MISSING_DISTANCE, dtype=np.int32),
                    np.full((len(packed), k), -1, dtype=np.int64))
        D, rows = self._placement.search(self._index, self._faiss_codes(packed), k)
        last = rows[:, -1]  # Faiss puts missing neighbours last in each row
        if (last[0] if len(last) == 1 else last.min()) < 0:  # (a scalar read is 15x cheaper than min)
            D[rows < 0] = MISSING_DISTANCE
        return D, rows

    def _rows_to_ids(self, rows: np.ndarray) -> np.ndarray:
        if self._ids_are_rows:
            return rows
        return np.where(rows >= 0, self._ids[np.maximum(rows, 0)], -1)

    def search(self, codes, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Hamming kNN: ``(D, I)``, int32 distances and int64 ids, ``(nq, k)``, nearest first.

        Slots beyond the available neighbours hold id ``-1`` and distance ``MISSING_DISTANCE``.
        """
        D, rows = self._search_rows(self._check_queries(codes, k), k)
        return D, self._rows_to_ids(rows)

    def range_search(self, codes, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every stored code within Hamming distance ``radius`` (inclusive) of each query.

        Returns Faiss's ``(lims, D, I)``: the results of query ``i`` are ``D[lims[i]:lims[i+1]]``.
        """
        packed = self._check_queries(codes, 1)
        lims, D, rows = self._range_rows(packed, radius)
        return lims, D, self._rows_to_ids(rows)

    def _range_rows(self, packed: np.ndarray, radius: int):
        if not self.spec.supports_range_search:
            raise ValueError(f"spec {self.spec} has no range search; use flat, IVF or MultiHash, or pass candidates=")
        if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
            raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
        if len(self) == 0:
            return np.zeros(len(packed) + 1, dtype=np.int64), np.empty(0, np.int32), np.empty(0, np.int64)
        # Faiss counts neighbours strictly below the threshold.
        return self._index.range_search(self._faiss_codes(packed), int(radius) + 1)

    def search_rerank(self, codes, features, k: int = 8, candidates: int = 1000,
                      radius: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Coarse-then-fine search: a Hamming pool, reranked by Euclidean distance on features.

        The pool is the ``candidates`` nearest codes, or with ``radius`` every code within
        that Hamming radius. Returns float32 Euclidean distances and int64 ids, ``(nq, k)``,
        padded with ``inf`` / ``-1`` when a pool holds fewer than ``k``.
        """
        packed = self._check_queries(codes, k)
        D, rows = self._rerank_rows(packed, features, k, candidates, radius)
        return D, self._rows_to_ids(rows)

    def _rerank_rows(self, packed, features, k, candidates, radius):
        stored = self.features
        if stored is None and len(self):
            raise ValueError("this index holds no features; add codes with features=... to use search_rerank")
        dim = None if stored is None else stored.shape[1]
        q = np.asarray(features)
        if q.ndim != 2 or q.shape[0] != len(packed) or (dim is not None and q.shape[1] != dim):
            raise ValueError(f"query features: expected shape ({len(packed)}, {'d' if dim is None else dim}), "
                             f"got {q.shape}")
        _check_real(q, "query features")
        if not np.all(np.isfinite(q)):
            raise ValueError("query features contain NaN or infinite values")
        if radius is not None:
            pool = _pad_ranges(*self._range_rows(packed, radius))
        else:
            if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or candidates <= 0:
                raise ValueError(f"candidates must be a positive integer, got {candidates!r}")
            pool = self._search_rows(packed, int(candidates))[1]
        if stored is None:  # an empty index: nothing to rerank, every slot is padding
            return np.full((len(packed), k), np.inf, np.float32), np.full((len(packed), k), -1, np.int64)
        return rerank_euclidean(q, stored, pool, k)

    def vote(self, codes, k: int = 8, features=None, candidates: int = 1000,
             radius: int | None = None, rerank: bool = True) -> np.ndarray:
        """Majority label over each query's ``k`` nearest labelled neighbours (``-1`` if none).

        With ``features`` (the default path: it raised the vote on classes the encoder never
        saw, see README "Results") the neighbours come from :meth:`search_rerank`; without
        them, or with ``rerank=False``, from Hamming kNN.
        """
        packed = self._check_queries(codes, k)
        if features is None or not rerank:
            rows = self._search_rows(packed, k)[1]
        else:
            rows = self._rerank_rows(packed, features, k, candidates, radius)[1]
        return majority_vote(self.labels_of_rows(rows))

    def labels_of_rows(self, rows: np.ndarray) -> np.ndarray:
        return np.where(rows >= 0, self._labels[np.maximum(rows, 0)] if len(self._labels) else -1, -1)

    def labels_of(self, ids: np.ndarray) -> np.ndarray:
        """Labels of stored ids (``-1`` for id ``-1``)."""
        ids = np.asarray(ids)
        if self._ids_are_rows:
            return self.labels_of_rows(ids)
        order = np.argsort(self._ids)
        pos = np.searchsorted(self._ids, ids, sorter=order)
        rows = order[np.minimum(pos, len(order) - 1)]
        found = (ids >= 0) & (self._ids[rows] == ids)
        return np.where(found, self._labels[rows], -1)

    # ------------------------------------------------------------------ persistence
    def save(self, directory) -> Path:
        """Save index, labels, ids and features under ``directory``, atomically.

        A new version is written beside the current one and a one-line ``CURRENT``
        pointer is swapped with ``os.replace``: a crash mid-save leaves the previous
        version loadable.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        version = f"v-{uuid.uuid4().hex[:12]}"
        target = directory / version
        target.mkdir()
        faiss.write_index_binary(self._index, str(target / "index.faiss"))
        with h5py.File(target / "data.h5", "w") as f:
            f.create_dataset("labels", data=self._labels)
            f.create_dataset("ids", data=self._ids)
            if self.features is not None:
                f.create_dataset("features", data=self.features)
        meta = {"format": INDEX_FORMAT, "version": INDEX_FORMAT_VERSION, "bits": self.bits,
                "faiss_bits": self.faiss_bits,
                "spec": str(self.spec), "ntotal": len(self), "class_names": self.class_names,
                "metadata": self.metadata}
        write_json_atomic(target / "meta.json", meta)
        for name in ("index.faiss", "data.h5"):
            fsync_path(target / name)
        fsync_path(target)
        tmp = directory / f"{_CURRENT}.{version}.tmp"
        tmp.write_text(version + "\n")
        replace_durably(tmp, directory / _CURRENT)
        for old in directory.glob("v-*"):
            if old.name != version:
                shutil.rmtree(old, ignore_errors=True)
        for stale in directory.glob(f"{_CURRENT}.v-*.tmp"):  # pointers of saves that died before the swap
            stale.unlink(missing_ok=True)
        return target

    @classmethod
    def load(cls, directory, bits: int | None = None, device: str = "cpu") -> "HashIndex":
        """Load an index written by :meth:`save`; ``bits`` (optional) must match the saved width.
        ``device`` ("cpu" | "gpu" | "auto") is where searches run; it is not saved with the index."""
        directory = Path(directory)
        pointer = directory / _CURRENT
        if not pointer.exists():
            raise ValueError(f"{directory}: not a saved hashindex index (no {_CURRENT} file)")
        target = directory / pointer.read_text().strip()
        try:
            meta = json.loads((target / "meta.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{target}: unreadable index metadata ({exc})") from exc
        if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_FORMAT_VERSION:
            raise ValueError(f"{target}: not a hashindex index of a supported version")
        if bits is not None and int(bits) != meta["bits"]:
            raise ValueError(f"{directory}: index holds {meta['bits']}-bit codes, expected {bits}-bit")
        index = cls(bits=meta["bits"], spec=meta["spec"], class_names=meta.get("class_names"),
                    metadata=meta.get("metadata"), device=device)
        index._index = faiss.read_index_binary(str(target / "index.faiss"))
        index.faiss_bits = int(index._index.d)
        if index.faiss_bits != meta.get("faiss_bits", meta["bits"]):
            raise ValueError(f"{target}: index file holds {index.faiss_bits}-bit codes, metadata says "
                             f"{meta.get('faiss_bits', meta['bits'])}")
        if index._auto_request is None:
            apply_search_params(index._index, index.spec.kind, index.spec.params)
        with h5py.File(target / "data.h5", "r") as f:
            index._labels = f["labels"][()]
            index._ids = f["ids"][()]
            if "features" in f:
                index._feature_chunks = [f["features"][()]]
        index._ids_are_rows = bool(np.array_equal(index._ids, np.arange(len(index._ids))))
        if not (len(index._labels) == len(index._ids) == index._index.ntotal == meta["ntotal"]):
            raise ValueError(f"{target}: index and data files disagree on the number of codes")
        return index


def _check_real(values: np.ndarray, name: str) -> None:
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected real numbers, got dtype {values.dtype}")


def _pad_ranges(lims: np.ndarray, D: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Turn range-search output into an ``(nq, max_hits)`` row array padded with -1,
    each row's hits ordered by (Hamming distance, row)."""
    counts = np.diff(lims)
    nq = len(counts)
    pool = np.full((nq, int(counts.max()) if nq else 0), -1, dtype=np.int64)
    for q in range(nq):
        lo, hi = lims[q], lims[q + 1]
        order = np.lexsort((rows[lo:hi], D[lo:hi]))
        pool[q, : hi - lo] = rows[lo:hi][order]
    return pool
