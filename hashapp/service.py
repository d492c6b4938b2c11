"""The search service behind ``hashindex serve-http``: model and index loaded once, shared by threads.

Searches run concurrently (Faiss searches are thread-safe on an index nobody edits); an add or a
remove takes the write side of a readers-writer lock, so no search ever sees a half-edited index.
Other processes may edit the saved index too (``hashindex add`` / ``remove``): every edit runs
under the index directory's lock on the latest saved version (:func:`hashindex.persistence.edit_saved`),
and before each search the service checks the directory's ``CURRENT`` (one small file read) and
loads the new version when another writer saved one.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from hashindex.codes import as_packed_codes
from hashindex.index import HashIndex
from hashindex.persistence import edit_saved
from hashindex.index_dir import read_current
from hashindex.store import ShardError

from .query import PathLookup, class_name, load_index_model, query_results, recorded
from .update import AddReport, append_records, drop_records, store_of

UPLOADS_DIR = "uploads"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_k: int = 1000
    max_candidates: int = 10_000
    max_images: int = 64
    max_upload_bytes: int = 16 << 20


class BadRequest(ValueError):
    """A request the service refuses; the message is the reason given to the client."""


class ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def reading(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def writing(self):
        with self._cond:
            self._writers_waiting += 1
            self._cond.wait_for(lambda: not self._writer and not self._readers)
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class SearchService:
    """A saved index and its encoder, loaded once; search by image or code, add images, remove."""

    def __init__(self, index_dir: "str | os.PathLike", *, model_path=None, limits: Limits = Limits(),
                 device: str = "cpu") -> None:
        self.index_dir = Path(index_dir).resolve()  # resolved once: checked before every search
        self.index = HashIndex.load(self.index_dir)
        self.model_path = recorded(self.index, "model", model_path, "encoder file (--model)")
        self.model = load_index_model(self.index, self.model_path, f"index {self.index_dir}")
        self._prepare_model(device)
        self.limits = limits
        self.paths = PathLookup(self.index)
        self.lock = ReadWriteLock()
        self._reload_lock = threading.Lock()
        self._unloadable: str | None = None  # a saved version that failed to load, not tried again
        self.started = time.time()
        # OpenMP thread counts are per thread: the request threads get the one set where the
        # service was made (`hashindex --threads N serve-http`) instead of one per core each.
        self.threads = faiss.omp_get_max_threads()
        self.counts = {"searches": 0, "queries": 0, "adds": 0, "removes": 0, "reloads": 0}
        self._count_lock = threading.Lock()

    # ------------------------------------------------------------------ inputs
    def decode(self, uploads: list[tuple[str, bytes]]) -> list:
        """Decoded RGB images of ``(filename, bytes)`` uploads; an unreadable one is a BadRequest."""
        from encoders.data import decode_rgb

        if not uploads:
            raise BadRequest("no image uploaded (multipart field 'image')")
        if len(uploads) > self.limits.max_images:
            raise BadRequest(f"{len(uploads)} images in one request; the limit is {self.limits.max_images}")
        images = []
        for name, data in uploads:
            try:
                images.append(decode_rgb(io.BytesIO(data)))
            except Exception as exc:  # noqa: BLE001 - any decoder failure means "not an image we can read"
                raise BadRequest(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from exc
        return images

    def _prepare_model(self, device: str) -> None:
        """Put the model on its device in eval mode once (per request it cost 2 ms at 1M codes)."""
        from encoders.data import image_transform
        from encoders.training import resolve_device

        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        self._transform = image_transform(self.model.input_cfg)

    def encode(self, images: list) -> tuple[np.ndarray, np.ndarray]:
        """Packed codes and F7 features of decoded images."""
        import torch

        with torch.inference_mode():
            return self.model.encode(torch.stack([self._transform(im) for im in images]).to(self.device))

    def search_uploads(self, uploads: list[tuple[str, bytes]], *, k: int, candidates: int, rerank: bool,
                       labels=None) -> list[dict]:
        """Decode, encode and search uploaded images: one call, so one thread hop per request."""
        codes, features = self.encode(self.decode(uploads))
        return self.search([name for name, _ in uploads], codes, features if rerank else None, k=k,
                           candidates=candidates, labels=labels)

    def check_search(self, k, rerank: bool, candidates) -> tuple[int, int]:
        k, candidates = _positive_int(k, "k"), _positive_int(candidates, "candidates")
        if k > self.limits.max_k:
            raise BadRequest(f"k={k} exceeds the limit of {self.limits.max_k}")
        if rerank and candidates > self.limits.max_candidates:
            raise BadRequest(f"candidates={candidates} exceeds the limit of {self.limits.max_candidates}")
        if rerank and self.index.feature_dim is None:
            raise BadRequest("this index holds no F7 features: rerank is not available")
        return k, max(candidates, k)

    def parse_codes(self, codes) -> np.ndarray:
        """Codes from JSON: hex strings of packed codes, or lists of 0/1 (or ±1) bits."""
        if not isinstance(codes, list) or not codes:
            raise BadRequest("'codes' must be a non-empty list of hex strings or of 0/1 lists")
        if len(codes) > self.limits.max_images:
            raise BadRequest(f"{len(codes)} codes in one request; the limit is {self.limits.max_images}")
        try:
            if all(isinstance(c, str) for c in codes):
                rows = [np.frombuffer(bytes.fromhex(c), dtype=np.uint8) for c in codes]
                if any(len(r) != self.index.bits // 8 for r in rows):
                    raise ValueError(f"each hex code must hold {self.index.bits // 8} bytes")
                return np.stack(rows)
            return as_packed_codes(np.asarray(codes), self.index.bits)
        except (ValueError, TypeError) as exc:
            raise BadRequest(f"codes: {exc}") from exc

    # ------------------------------------------------------------------ operations
    def refresh(self) -> None:
        """Load the saved index again if another process saved a new version since. A version
        that fails to load is reported once and skipped: the service keeps the index it has."""
        if self.index.is_saved_as_current(self.index_dir):
            return
        # One reload at a time, none during this service's own edits (which save the new version
        # themselves); searches arriving meanwhile wait here, then find the index current.
        with self._reload_lock:
            if self.index.is_saved_as_current(self.index_dir):
                return
            current = None
            try:
                current = read_current(self.index_dir).name
                latest = None if current == self._unloadable else HashIndex.load(self.index_dir)
            except (OSError, ShardError) as exc:
                self._unloadable, latest = current, None
                warnings.warn(f"serving the index loaded before: the version saved since does not load ({exc})",
                              stacklevel=2)
            if latest is None:
                return
            with self.lock.writing():
                self._use(latest)
        self._count("reloads", 1)

    def _use(self, index: HashIndex) -> None:
        """Serve ``index`` from now on (the caller holds the write lock)."""
        if index is not self.index:
            self.index, self.paths = index, PathLookup(index)
        index.features  # noqa: B018 - joins added feature chunks now, not inside concurrent searches

    def search(self, names: list[str], codes: np.ndarray, features: np.ndarray | None, *, k: int,
               candidates: int, labels=None) -> list[dict]:
        faiss.omp_set_num_threads(self.threads)
        self.refresh()
        with self.lock.reading():
            try:
                results = query_results(self.index, self.paths, names, codes, features, k=k,
                                        candidates=candidates, labels=labels)
            except ValueError as exc:  # e.g. an unknown class in labels
                raise BadRequest(str(exc)) from exc
        self._count("searches", 1)
        self._count("queries", len(names))
        return results

    def add(self, uploads: list[tuple[str, bytes]], label: str | None) -> AddReport:
        """Keep the uploaded files beside the store (``uploads/``, named by content hash), encode
        them and append them to the store and the saved index. An upload the index already holds
        (the same bytes) is left out: the report's ``skipped`` names it."""
        images = self.decode(uploads)
        codes, features = self.encode(images)
        folder = store_of(self.index) / UPLOADS_DIR
        folder.mkdir(exist_ok=True)
        paths = []
        for (name, data), image in zip(uploads, images):
            suffix = Path(name).suffix.lower() if Path(name).suffix.lower() in (".png", ".jpg", ".jpeg") else ".png"
            path = folder / (hashlib.sha256(data).hexdigest()[:24] + suffix)
            if not path.exists():
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            paths.append(str(path))
        faiss.omp_set_num_threads(self.threads)
        with self._reload_lock, edit_saved(self.index_dir, self.index) as index, self.lock.writing():
            report = append_records(index, codes, features, paths, [label] * len(paths),
                                    self.paths if index is self.index else None)
            self._use(index)
        name_of = {path: name for path, (name, _) in zip(paths, uploads)}
        report.skipped = [(name_of.get(path, path), reason) for path, reason in report.skipped]
        self._count("adds", len(report.ids))
        return report

    def remove(self, ids=None, label: str | None = None) -> int:
        with self._reload_lock, edit_saved(self.index_dir, self.index) as index, self.lock.writing():
            removed = drop_records(index, ids=ids, label=label)
            self._use(index)
        self._count("removes", removed)
        return removed

    def image_path(self, image_id: int) -> Path | None:
        """The file of a stored id, or None where the store does not know it."""
        path = self.paths.lookup(np.array([image_id])).get(image_id)
        return Path(path) if path else None

    def stats(self) -> dict:
        self.refresh()
        with self.lock.reading():
            labels, counts = np.unique(self.index.labels, return_counts=True)
            classes = {class_name(self.index, int(lab)) if lab >= 0 else "(unlabelled)": int(n)
                       for lab, n in zip(labels, counts)}
            return {"ntotal": len(self.index), "bits": self.index.bits, "spec": str(self.index.spec),
                    "classes": classes, "features": self.index.feature_dim, "model": str(self.model_path),
                    "store": self.index.metadata.get("shards"), "uptime_s": round(time.time() - self.started, 1),
                    "served": dict(self.counts), "limits": asdict(self.limits)}

    def _count(self, name: str, n: int) -> None:
        with self._count_lock:
            self.counts[name] += n


def _positive_int(value, name: str) -> int:
    """A positive int from JSON (an int) or a form field (a string of digits)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadRequest(f"{name} must be a positive integer, got {value!r}")
    return value
