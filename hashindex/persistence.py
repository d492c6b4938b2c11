"""Saving and loading a :class:`~hashindex.index.HashIndex` in its directory (see :mod:`.index_dir`).

A save writes a full version (the Faiss index, labels, ids, features) or, for flat and IVF
indexes, a delta version: only the ids removed and the records added since the version the
index was loaded from (or saved as). A load replays the chain of deltas on the full version it
builds on. :func:`edit_saved` runs an edit under the directory's lock on the latest version.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import faiss
import h5py
import numpy as np

from .durable import DirectoryLock, fsync_path, write_json_atomic
from .index_dir import (INDEX_FORMAT, META, check_file, file_crc32, new_version, publish_version, read_current,
                        read_meta, seal_meta, version_chain)
from .rows import codes_from_row
from .spec import apply_search_params, parse_spec
from .store import ShardError
from .store.format import check_local_datasets, hdf5_image, memory_hdf5

if TYPE_CHECKING:
    from .index import HashIndex

INDEX_FORMAT_VERSION = 1
DELTA_FORMAT_VERSION = 2  #: the ``version`` of a delta version's meta.json (older readers refuse it)
#: Kinds saved as deltas: their replayed adds and removals rebuild exactly the index that was saved.
DELTA_KINDS = ("flat", "IVF")
#: A save writes a full version instead of a delta once the chain holds this many deltas ...
MAX_DELTAS = 16
#: ... or once the changes since the last full version reach this fraction of the index.
MAX_DELTA_FRACTION = 0.25


def save_version(index: "HashIndex", directory: Path, delta: bool) -> Path:
    """Write ``index`` as a new version of ``directory`` (whose lock the caller holds) and make it
    current: a delta where :func:`delta_chain` allows it and ``delta`` asks for one, else in full."""
    target = new_version(directory)
    chain = delta_chain(index, directory) if delta else None
    if chain is None:
        files, fields = {"index.faiss": faiss.serialize_index_binary(index._index).tobytes()}, {}
        files["data.h5"] = data_image(index, 0)
    else:
        files, fields = {}, {"chain": chain}
        removed = np.concatenate([np.empty(0, np.int64), *index._removed_since_save])
        files["delta.h5"] = data_image(index, index._saved_rows, removed)
    checksums = {}
    for name, data in files.items():
        (target / name).write_bytes(data)  # a full disk raises OSError here
        checksums[name] = {"size": len(data), "crc32": file_crc32(target / name, data)}
    meta = {"format": INDEX_FORMAT, "version": INDEX_FORMAT_VERSION if chain is None else DELTA_FORMAT_VERSION,
            "bits": index.bits, "faiss_bits": index.faiss_bits,
            "spec": str(index.spec), "ntotal": len(index), "class_names": index.class_names,
            "metadata": index.metadata, "checksums": checksums, **fields}
    write_json_atomic(target / META, seal_meta(meta))
    for name in files:
        fsync_path(target / name)
    fsync_path(target)
    publish_version(directory, target)
    index._forget_saved(directory, target.name)
    return target


def delta_chain(index: "HashIndex", directory: Path) -> list[str] | None:
    """The chain a delta saved now would extend (the current version's), or None where a
    full save is due: another kind, another directory or version, a long chain, many changes."""
    if index.spec.kind not in DELTA_KINDS or not index.is_saved_as_current(directory):
        return None
    try:
        chain = version_chain(read_current(directory))
    except ShardError:
        return None
    changes = len(index) - index._saved_rows + sum(len(r) for r in index._removed_since_save)
    if len(chain) > MAX_DELTAS or changes > MAX_DELTA_FRACTION * max(1, index._saved_rows):
        return None
    return chain


def data_image(index: "HashIndex", start: int, removed: np.ndarray | None = None) -> bytes:
    """The HDF5 image of rows ``start ..`` (labels, ids, features); a delta's (``removed``
    given) holds their codes and the ``removed`` ids too."""
    f = memory_hdf5("data.h5")
    if removed is not None:
        f.create_dataset("removed", data=removed)
        f.create_dataset("codes", data=codes_from_row(index._index, index.spec, start)[:, : index.bits // 8])
    f.create_dataset("labels", data=index._labels[start:])
    f.create_dataset("ids", data=index._ids[start:])
    if index.features is not None:
        f.create_dataset("features", data=index.features[start:])
    return hdf5_image(f)


def load_saved(cls: "type[HashIndex]", directory, bits: int | None = None, device: str = "cpu") -> "HashIndex":
    """Load an index written by :meth:`save`; ``bits`` (optional) must match the saved width.
    ``device`` ("cpu" | "gpu" | "auto") is where searches run; it is not saved with the index.
    Every file is checked against the CRC-32 its save recorded (``ShardError`` naming the file)."""
    directory = Path(directory)
    target = read_current(directory)
    try:
        index = load_chain(cls, directory, target, bits, device)
    except (OSError, ShardError):
        if read_current(directory) == target:
            raise
        # Another process saved meanwhile and removed the version we were opening: once more.
        target = read_current(directory)
        index = load_chain(cls, directory, target, bits, device)
    index._forget_saved(directory, target.name)
    return index


def load_chain(cls: "type[HashIndex]", directory: Path, target: Path, bits: int | None, device: str) -> "HashIndex":
    """The full version ``target`` builds on, with each delta of its chain replayed."""
    chain = version_chain(target)
    index = _load_full(cls, directory, directory / chain[0], bits, device)
    for name in chain[1:]:
        meta = read_meta(directory / name)
        data = read_data(directory / name / "delta.h5", meta.get("checksums", {}).get("delta.h5"))
        if meta.get("version") != DELTA_FORMAT_VERSION or "codes" not in data:
            raise ShardError(f"{directory / name}: not a delta version of this index")
        index.remove(data["removed"])
        index.add(data["codes"], labels=data["labels"], ids=data["ids"], features=data.get("features"))
        if len(index) != meta["ntotal"]:
            raise ShardError(f"{directory / name}: replaying this delta gives {len(index)} codes, "
                             f"its metadata says {meta['ntotal']}")
        index.class_names, index.metadata = list(meta.get("class_names") or []), dict(meta.get("metadata") or {})
        index.spec = parse_spec(meta["spec"])
        apply_search_params(index._index, index.spec.kind, index.spec.params)
    return index


def _load_full(cls: "type[HashIndex]", directory: Path, target: Path, bits: int | None, device: str) -> "HashIndex":
    meta = read_meta(target)
    if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_FORMAT_VERSION:
        raise ValueError(f"{target}: not a hashindex index of a supported version")
    if bits is not None and int(bits) != meta["bits"]:
        raise ValueError(f"{directory}: index holds {meta['bits']}-bit codes, expected {bits}-bit")
    checksums = meta.get("checksums", {})
    index = cls(bits=meta["bits"], spec=meta["spec"], class_names=meta.get("class_names"),
                metadata=meta.get("metadata"), device=device)
    faiss_file = target / "index.faiss"
    blob = faiss_file.read_bytes() if faiss_file.exists() else None
    check_file(faiss_file, checksums.get("index.faiss"), blob)
    try:
        index._index = faiss.deserialize_index_binary(np.frombuffer(blob, dtype=np.uint8))
    except RuntimeError as exc:
        raise ShardError(f"{faiss_file}: unreadable Faiss index ({exc})") from exc
    index.faiss_bits = int(index._index.d)
    if index.faiss_bits != meta.get("faiss_bits", meta["bits"]):
        raise ValueError(f"{target}: index file holds {index.faiss_bits}-bit codes, metadata says "
                         f"{meta.get('faiss_bits', meta['bits'])}")
    if index._auto_request is None:
        apply_search_params(index._index, index.spec.kind, index.spec.params)
    data = read_data(target / "data.h5", checksums.get("data.h5"))
    index._labels, index._ids = data["labels"], data["ids"]
    index._feature_chunks = [data["features"]] if "features" in data else []
    index._ids_are_rows = bool(np.array_equal(index._ids, np.arange(len(index._ids))))
    if not (len(index._labels) == len(index._ids) == index._index.ntotal == meta["ntotal"]):
        raise ValueError(f"{target}: index and data files disagree on the number of codes")
    return index


@contextmanager
def edit_saved(directory, index: "HashIndex | None" = None, *, wait: float = 60.0) -> Iterator["HashIndex"]:
    """Edit the index saved in ``directory`` with no other writer in between:

    >>> with edit_saved("my-index") as index:   # doctest: +SKIP
    ...     index.add(codes, labels=labels)

    The directory's lock is taken (waiting up to ``wait`` seconds for another writer); the block
    gets the latest saved index (``index`` itself when it is that version, else a fresh load),
    and what it changed is saved, as a delta where possible, before the lock is released. An
    exception in the block saves nothing.
    """
    from .index import HashIndex

    directory = Path(directory)
    with DirectoryLock(directory, "index directory", wait=wait):
        latest = index if index is not None and index.is_saved_as_current(directory) else HashIndex.load(directory)
        yield latest
        if latest.unsaved_changes:
            save_version(latest, directory, delta=True)


def read_data(path: Path, recorded: dict | None) -> dict[str, np.ndarray]:
    """Every dataset of a version's data.h5 / delta.h5, checked against its recorded size and CRC-32."""
    check_file(path, recorded)
    try:
        with h5py.File(path, "r") as f:
            check_local_datasets(f, path)
            data = {name: f[name][()] for name in f}
    except ShardError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, KeyError, ... on a damaged file
        raise ShardError(f"{path}: unreadable index data ({type(exc).__name__}: {exc})") from exc
    if "labels" not in data or "ids" not in data:
        raise ShardError(f"{path}: unreadable index data (no labels or ids)")
    return data
