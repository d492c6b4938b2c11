"""``HashIndex``: a Faiss binary index with labels, F7 features and ids kept alongside."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from .durable import DirectoryLock
from .autotune import TRAIN_CODES_PER_LIST
from .filters import label_mask, masked_knn
from .codes import MISSING_DISTANCE, as_packed_codes, check_bits, int_column
from .gpu import DevicePlacement
from .index_dir import read_current
from .persistence import load_saved, save_version
from .query_checks import check_candidates, check_queries, check_query_features, check_real, range_pool
from .rerank import rerank_euclidean
from .routing import FlatRouting
from .rows import remove_rows
from .spec import KINDS, IndexSpec, apply_search_params, padded_bits, parse_spec
from .store import ShardError, ShardReader
from .vote import majority_vote


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
                 metadata: dict | None = None, device: str = "cpu", pad: bool = True,
                 engine: "str | dict[int, str] | None" = None) -> None:
        self.bits = check_bits(bits)
        self.spec = parse_spec(spec)
        self.class_names: list[str] = list(class_names or [])
        #: Free-form JSON-able provenance saved with the index (e.g. source shards, encoder file).
        self.metadata: dict = dict(metadata or {})
        #: Width of the codes inside the Faiss index (``bits`` plus zero padding).
        self.faiss_bits = padded_bits(self.bits) if pad else self.bits
        self.spec.check_fits(self.bits)  # the tables must fit the caller's width, not the padded one
        self._auto_request = self.spec if self.spec.kind == "auto" else None
        self._index = (IndexSpec("flat") if self._auto_request else self.spec).build(self.faiss_bits)
        #: Where kNN searches run: ``device`` is "cpu", "gpu" or "auto" (see :mod:`hashindex.gpu`).
        self._placement = DevicePlacement(device)
        #: Flat searches routed per call between engines (see :mod:`hashindex.routing`); ``engine``
        #: names one engine (e.g. "torch") or a table {batch size: engine name}.
        self._routing = FlatRouting(device, engine)
        self._labels = np.empty(0, dtype=np.int64)
        self._ids = np.empty(0, dtype=np.int64)
        self._ids_are_rows = True
        self._id_order: np.ndarray | None = None  # argsort of the ids, kept between lookups
        self._feature_chunks: list[np.ndarray] = []
        self._forget_saved()

    def _forget_saved(self, directory: Path | None = None, version: str | None = None) -> None:
        """Record which saved version this index equals (none: the next save is a full one)."""
        #: (resolved directory, version name) this index was last loaded from or saved as.
        self._saved = None if directory is None else (directory.resolve(), version)
        #: Leading rows that the saved version holds (rows after them were added since).
        self._saved_rows = len(self)
        #: Ids of saved rows removed since.
        self._removed_since_save: list[np.ndarray] = []

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
        self.spec.train(self._index, self._faiss_codes(packed))

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
            self.spec.add(self._index, self._faiss_codes(packed))
        self._labels = np.concatenate([self._labels, labels])
        self._ids_are_rows = self._ids_are_rows and bool(np.array_equal(ids, np.arange(len(self._ids), len(self._ids) + n)))
        self._ids = np.concatenate([self._ids, ids])
        self._id_order = None
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
        check_real(feats, "features")
        if feats.dtype not in (np.float16, np.float32):
            feats = feats.astype(np.float32)
        if not np.all(np.isfinite(feats)):
            raise ValueError("features contain NaN or infinite values")
        return feats

    def remove(self, ids) -> int:
        """Remove the codes stored under ``ids`` (ids not present are ignored); returns how many
        were removed. Flat and IVF indexes remove in place, HNSW is rebuilt from its codes;
        ``Hash`` / ``MultiHash`` cannot remove (see :mod:`hashindex.rows`)."""
        ids = np.atleast_1d(np.asarray(ids))
        rows = self.rows_of(int_column(ids, len(ids), "ids"))
        rows = np.unique(rows[rows >= 0])
        if len(rows) == 0:
            return 0
        self._index = remove_rows(self._index, self.spec, rows)
        self._placement.invalidate()
        self._routing.invalidate()
        saved = rows[rows < self._saved_rows]
        self._removed_since_save.append(self._ids[saved])
        self._saved_rows -= len(saved)
        keep = np.ones(len(self), dtype=bool)
        keep[rows] = False
        features = self.features
        self._labels, self._ids = self._labels[keep], self._ids[keep]
        self._feature_chunks = [] if features is None else [features[keep]]
        self._ids_are_rows = bool(np.array_equal(self._ids, np.arange(len(self._ids))))
        self._id_order = None
        return len(rows)

    @classmethod
    def from_shards(cls, directory, spec: "str | IndexSpec" = "flat", *, features: bool = True,
                    progress: bool = True, device: str = "cpu",
                    engine: "str | dict[int, str] | None" = None) -> "HashIndex":
        """Load every shard of a store (codes, labels, ids and, if stored, features);
        ``device`` and ``engine`` as in the constructor."""
        reader = ShardReader(directory)
        fields = ["codes", "labels", "ids"] + (["features"] if features and reader.feature_dim else [])
        data = reader.read(fields, progress=progress)
        index = cls(bits=reader.bits, spec=spec, class_names=reader.class_names,
                    metadata={**reader.info.metadata, "shards": str(Path(directory).resolve())}, device=device,
                    engine=engine)
        index.add(data["codes"], labels=data["labels"], features=data.get("features"), ids=data["ids"])
        return index

    # ------------------------------------------------------------------ search
    def search_rows(self, packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row-level kNN for validated packed ``bits``-bit queries (see :func:`check_queries`):
        ``(D, rows)``, rows of this index (not ids), missing slots ``-1`` / ``MISSING_DISTANCE``."""
        k = int(k)  # Faiss's SWIG wrapper rejects numpy integers
        if len(self) == 0 or len(packed) == 0:
            return (np.full((len(packed), k), MISSING_DISTANCE, dtype=np.int32),
                    np.full((len(packed), k), -1, dtype=np.int64))
        faiss_codes = self._faiss_codes(packed)
        routed = self._routing.search(self._index, faiss_codes, k)
        if routed is not None:
            D, rows = routed
            self.metadata["routing"] = self._routing.report
        else:
            D, rows = self._placement.search(self._index, faiss_codes, k)
        last = rows[:, -1]  # Faiss puts missing neighbours last in each row
        if (last[0] if len(last) == 1 else last.min()) < 0:  # (a scalar read is 15x cheaper than min)
            D[rows < 0] = MISSING_DISTANCE
        return D, rows

    def rows_to_ids(self, rows: np.ndarray) -> np.ndarray:
        """The ids stored at ``rows`` (``-1`` stays ``-1``)."""
        if self._ids_are_rows:
            return rows
        return np.where(rows >= 0, self._ids[np.maximum(rows, 0)], -1)

    def search(self, codes, k: int = 8, labels=None) -> tuple[np.ndarray, np.ndarray]:
        """Hamming kNN: ``(D, I)``, int32 distances and int64 ids, ``(nq, k)``, nearest first.

        Slots beyond the available neighbours hold id ``-1`` and distance ``MISSING_DISTANCE``.
        ``labels`` (ints or class names) restricts the neighbours to those classes, exactly
        (see :mod:`hashindex.filters`).
        """
        D, rows = self._knn_rows(check_queries(codes, k, self.bits), k, labels)
        return D, self.rows_to_ids(rows)

    def _knn_rows(self, packed: np.ndarray, k: int, labels) -> tuple[np.ndarray, np.ndarray]:
        if labels is None:
            return self.search_rows(packed, k)
        mask = label_mask(labels, self._labels, self.class_names)
        return masked_knn(self._index, self.spec, self._faiss_codes(packed), int(k), mask)

    def range_search(self, codes, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every stored code within Hamming distance ``radius`` (inclusive) of each query.

        Returns Faiss's ``(lims, D, I)``: the results of query ``i`` are ``D[lims[i]:lims[i+1]]``.
        """
        packed = check_queries(codes, 1, self.bits)
        lims, D, rows = self.range_search_rows(packed, radius)
        return lims, D, self.rows_to_ids(rows)

    def range_search_rows(self, packed: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row-level :meth:`range_search` for validated packed queries: ``(lims, D, rows)``."""
        if not self.spec.supports_range_search:
            kinds = ", ".join(kind.name for kind in KINDS.values() if kind.range_search)
            raise ValueError(f"spec {self.spec} has no range search; use one of {kinds}, or pass candidates=")
        if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
            raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
        if len(self) == 0:
            return np.zeros(len(packed) + 1, dtype=np.int64), np.empty(0, np.int32), np.empty(0, np.int64)
        # Faiss counts neighbours strictly below the threshold (an int32); no distance exceeds faiss_bits.
        return self._index.range_search(self._faiss_codes(packed), int(min(radius, self.faiss_bits)) + 1)

    def search_rerank(self, codes, features, k: int = 8, candidates: int = 1000,
                      radius: int | None = None, labels=None) -> tuple[np.ndarray, np.ndarray]:
        """Coarse-then-fine search: a Hamming pool, reranked by Euclidean distance on features.

        The pool is the ``candidates`` nearest codes, or with ``radius`` every code within
        that Hamming radius; ``labels`` restricts the pool as in :meth:`search`. Returns float32
        Euclidean distances and int64 ids, ``(nq, k)``, padded with ``inf`` / ``-1`` when a pool
        holds fewer than ``k``.
        """
        packed = check_queries(codes, k, self.bits)
        D, rows = self._rerank_rows(packed, features, k, candidates, radius, labels)
        return D, self.rows_to_ids(rows)

    def _rerank_rows(self, packed, features, k, candidates, radius, labels=None):
        stored = self.features
        if stored is None and len(self):
            raise ValueError("this index holds no features; add codes with features=... to use search_rerank")
        q = check_query_features(features, len(packed), None if stored is None else stored.shape[1])
        if radius is not None:
            if labels is not None:
                raise ValueError("labels filter kNN pools; pass candidates= instead of radius=")
            pool = range_pool(*self.range_search_rows(packed, radius))
        else:
            pool = self._knn_rows(packed, max(1, min(check_candidates(candidates), len(self))), labels)[1]
        if stored is None:  # an empty index: nothing to rerank, every slot is padding
            return np.full((len(packed), k), np.inf, np.float32), np.full((len(packed), k), -1, np.int64)
        return rerank_euclidean(q, stored, pool, k)

    def vote(self, codes, k: int = 8, features=None, candidates: int = 1000,
             radius: int | None = None, labels=None, rerank: bool = True) -> np.ndarray:
        """Majority label over each query's ``k`` nearest labelled neighbours (``-1`` if none).

        With ``features`` (the default path: it raised the vote on classes the encoder never
        saw, see README "Results") the neighbours come from :meth:`search_rerank`; without
        them, or with ``rerank=False``, from Hamming kNN. ``labels`` restricts them as in
        :meth:`search`.
        """
        packed = check_queries(codes, k, self.bits)
        if features is None or not rerank:
            rows = self._knn_rows(packed, k, labels)[1]
        else:
            rows = self._rerank_rows(packed, features, k, candidates, radius, labels)[1]
        return majority_vote(self.labels_of_rows(rows))

    def labels_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """Labels stored at ``rows`` (``-1`` for row ``-1``)."""
        return np.where(rows >= 0, self._labels[np.maximum(rows, 0)] if len(self._labels) else -1, -1)

    def labels_of(self, ids: np.ndarray) -> np.ndarray:
        """Labels of stored ids (``-1`` for id ``-1``)."""
        return self.labels_of_rows(self.rows_of(ids))

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows of stored ids (``-1`` for an id not stored)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self._ids):
            return np.full(ids.shape, -1, dtype=np.int64)
        if self._ids_are_rows:
            return np.where((ids >= 0) & (ids < len(self._ids)), ids, -1)
        if self._id_order is None:  # sorting 1M ids per search cost more than the search
            self._id_order = np.argsort(self._ids)
        order = self._id_order
        pos = np.searchsorted(self._ids, ids, sorter=order)
        rows = order[np.minimum(pos, len(order) - 1)]
        return np.where((ids >= 0) & (self._ids[rows] == ids), rows, -1)

    # ------------------------------------------------------------------ persistence
    def save(self, directory, *, delta: bool = False) -> Path:
        """Save index, labels, ids and features under ``directory``, atomically.

        A new version is written beside the current one and a one-line ``CURRENT``
        pointer is swapped with ``os.replace``: a crash mid-save leaves the previous
        version loadable (see :mod:`hashindex.index_dir`). The directory is locked while
        saving; one that holds anything but a saved index is refused. With ``delta=True``
        only the changes since this index was loaded from (or saved as) the current
        version are written, where :func:`~hashindex.persistence.delta_chain` allows it; otherwise the whole index.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with DirectoryLock(directory, "index directory"):
            return self.save_locked(directory, delta=delta)
    def save_locked(self, directory, *, delta: bool = False) -> Path:
        """:meth:`save` for a caller that already holds ``directory``'s lock (see
        :func:`~hashindex.persistence.edit_saved`)."""
        return save_version(self, Path(directory), delta)

    @property
    def unsaved_changes(self) -> bool:
        """Whether codes were added or removed since this index was loaded or saved."""
        return self._saved is None or len(self) != self._saved_rows or bool(self._removed_since_save)

    def is_saved_as_current(self, directory) -> bool:
        """Whether this index was loaded from (or saved as) the version ``directory`` holds now:
        one read of its ``CURRENT`` file, cheap enough to check before every search."""
        if self._saved is None:
            return False
        directory = Path(directory)
        try:
            if read_current(directory).name != self._saved[1]:
                return False
        except (OSError, ShardError):
            return False
        return directory == self._saved[0] or directory.resolve() == self._saved[0]

    @classmethod
    def load(cls, directory, bits: int | None = None, device: str = "cpu",
             engine: "str | dict[int, str] | None" = None) -> "HashIndex":
        """Load an index written by :meth:`save`; ``bits`` (optional) must match the saved width.
        ``device`` ("cpu" | "gpu" | "auto") and ``engine`` (as in the constructor) say where
        searches run; neither is saved with the index. Every file is checked against the CRC-32
        its save recorded (``ShardError`` naming the file)."""
        index = load_saved(cls, directory, bits, device)
        if engine is not None:
            index._routing = FlatRouting(device, engine)
        return index
