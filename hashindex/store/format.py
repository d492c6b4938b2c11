"""The store's on-disk format: manifest, shard attributes, and their validation."""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..durable import write_json_atomic

FORMAT_NAME = "hashindex-shards"
FORMAT_VERSION = 1
#: The manifest version of a store with removed records: older readers, which would bring them back, refuse it.
REMOVALS_FORMAT_VERSION = 2
MANIFEST = "manifest.json"
SHARD_PATTERN = "part-{:05d}.h5"
FIELDS = ("codes", "labels", "ids", "features", "paths")
#: Attribute holding the CRC-32 of a shard's UTF-8 paths (kept in an unchecksummed global heap).
PATHS_CRC_ATTR = "paths_crc32"
#: Attribute of each numeric dataset: the CRC-32 of its bytes as written. fletcher32 alone passes
#: a chunk that was never written (all zeros, checksum included), as a full disk can leave it.
DATA_CRC_ATTR = "crc32"


class ShardError(ValueError):
    """A shard, store or saved index that cannot be read or written to; the message names the file."""


@dataclass
class Shard:
    """The records of one shard file, as numpy arrays (``features`` / ``paths`` may be None)."""

    path: Path
    codes: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    features: np.ndarray | None = None
    paths: list[str] | None = None

    def __len__(self) -> int:
        return len(self.codes)


def last_id(entry: dict) -> int:
    """The largest id of a manifest's shard entry (ids increase through a store, with gaps where
    images were skipped)."""
    return entry.get("last_id", entry["first_id"] + entry["count"] - 1)


@dataclass
class StoreInfo:
    """What the manifest records about a store."""

    bits: int
    feature_dim: int | None = None
    feature_dtype: str = "float16"
    class_names: list[str] = field(default_factory=list)
    shards: list[dict] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    #: Ids of records removed from the store (sorted): their shards keep them, readers leave them out.
    removed_ids: list[int] = field(default_factory=list)

    @property
    def num_records(self) -> int:
        """Records in the shard files, removed ones included."""
        return sum(s["count"] for s in self.shards)

    @property
    def next_id(self) -> int:
        # last_id, not first_id + count: ids may have gaps (skipped images) inside a shard.
        return max((last_id(s) + 1 for s in self.shards), default=0)

    def to_json(self) -> dict:
        removals = {"removed_ids": list(self.removed_ids)} if self.removed_ids else {}
        return {
            "format": FORMAT_NAME,
            "version": REMOVALS_FORMAT_VERSION if removals else FORMAT_VERSION,
            "bits": self.bits,
            "feature_dim": self.feature_dim,
            "feature_dtype": self.feature_dtype,
            "class_names": list(self.class_names),
            "num_records": self.num_records,
            "shards": self.shards,
            "metadata": self.metadata,
            **removals,
        }

    @classmethod
    def from_json(cls, payload: dict, source: Path) -> "StoreInfo":
        if payload.get("format") != FORMAT_NAME:
            raise ShardError(f"{source}: not a hashindex manifest (format={payload.get('format')!r})")
        if payload.get("version") not in (FORMAT_VERSION, REMOVALS_FORMAT_VERSION):
            raise ShardError(f"{source}: manifest version {payload.get('version')} is not supported")
        try:
            for entry in payload["shards"]:
                check_shard_name(entry["file"], source)
            return cls(
                bits=int(payload["bits"]),
                feature_dim=payload.get("feature_dim"),
                feature_dtype=payload.get("feature_dtype", "float16"),
                class_names=list(payload.get("class_names", [])),
                shards=list(payload["shards"]),
                metadata=dict(payload.get("metadata", {})),
                removed_ids=sorted(int(i) for i in payload.get("removed_ids", [])),
            )
        except ShardError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ShardError(f"{source}: malformed manifest ({exc})") from exc


def read_store_info(directory: str | os.PathLike) -> StoreInfo:
    """Read a store's manifest; raise ``ShardError`` naming the file if it is missing or bad."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise ShardError(f"{path}: no manifest; {directory} is not a hashindex shard store")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ShardError(f"{path}: unreadable manifest ({exc})") from exc
    return StoreInfo.from_json(payload, path)


def write_store_info(directory: str | os.PathLike, info: StoreInfo) -> None:
    """Write (or atomically replace) a store's manifest."""
    write_json_atomic(Path(directory) / MANIFEST, info.to_json())


def memory_hdf5(name: str, libver: str = "v110") -> h5py.File:
    """A new HDF5 file kept in memory, written out whole by :func:`hdf5_image`. HDF5 never writes
    to the disk itself then: its write errors (a full disk) are only printed, and can crash the
    process at exit; Python's own write of the image raises ``OSError`` instead."""
    return h5py.File(name, "w", driver="core", backing_store=False, libver=libver)


def hdf5_image(f: h5py.File) -> bytes:
    """Close a :func:`memory_hdf5` file and return its bytes."""
    f.flush()
    image = f.id.get_file_image()
    f.close()
    return image


def check_shard_name(name, manifest: Path) -> str:
    """A manifest's shard ``file`` entry must be a plain file name inside the store."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ShardError(f"{manifest}: shard entry {name!r} is not a plain file name inside the store")
    return name


def check_local_datasets(f: h5py.File, path: Path) -> None:
    """Refuse shards whose datasets would read another file: external links, external raw
    storage or virtual datasets (a store from an untrusted source could point them anywhere)."""
    for name in f:
        link = f.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise ShardError(f"{path}: {name!r} is a {type(link).__name__}, not data stored in the shard")
        obj = f[name]
        if isinstance(obj, h5py.Dataset) and (obj.external or obj.is_virtual):
            kind = "external raw storage" if obj.external else "a virtual dataset"
            raise ShardError(f"{path}: dataset {name!r} uses {kind}, which reads other files; refused")


def read_shard_attrs(path: Path, bits: int | None = None) -> dict:
    """Open one shard, check it is complete and well formed, and return its attributes."""
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            if attrs.get("format") != FORMAT_NAME:
                raise ShardError(f"{path}: not a hashindex shard (foreign HDF5 file)")
            if not attrs.get("complete", False):
                raise ShardError(f"{path}: shard is not marked complete")
            check_local_datasets(f, path)
            missing = [name for name in ("codes", "labels", "ids") if name not in f]
            if missing:
                raise ShardError(f"{path}: missing dataset(s) {', '.join(missing)}")
            count = int(attrs["count"])
            shard_bits = int(attrs["bits"])
            if bits is not None and shard_bits != bits:
                raise ShardError(f"{path}: shard holds {shard_bits}-bit codes, store expects {bits}-bit")
            shapes = {name: f[name].shape for name in FIELDS if name in f}
    except ShardError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, RuntimeError, KeyError, ... on a damaged file
        raise corrupt_shard_error(path, exc) from exc
    if shapes["codes"] != (count, shard_bits // 8):
        raise ShardError(f"{path}: codes have shape {shapes['codes']}, expected ({count}, {shard_bits // 8})")
    for name, shape in shapes.items():
        if shape[0] != count:
            raise ShardError(f"{path}: dataset {name} has {shape[0]} rows, expected {count}")
    return {"count": count, "first_id": int(attrs["first_id"]),
            "last_id": int(attrs.get("last_id", int(attrs["first_id"]) + count - 1)),
            "bits": shard_bits, "fields": list(shapes)}


def verify_shard_data(path: Path, bits: int | None = None) -> dict:
    """:func:`read_shard_attrs`, then read every dataset in full, so that each chunk's fletcher32
    and each dataset's CRC-32 are checked: a shard whose writes failed unnoticed raises ``ShardError``."""
    attrs = read_shard_attrs(path, bits)
    read_checked(path, attrs["fields"])
    return attrs


def read_checked(path: Path, fields) -> dict:
    """Read the ``fields`` a shard has, each checked against its CRC-32 (paths decoded)."""
    try:
        with h5py.File(path, "r") as f:
            data = {name: f[name][()] for name in fields if name in f}
            for name, values in data.items():
                if name == "paths":
                    data["paths"] = decode_paths(values, f.attrs.get(PATHS_CRC_ATTR), path)
                else:
                    check_data_crc(f[name], values, path)
    except ShardError:
        raise
    except Exception as exc:  # noqa: BLE001 - see read_shard_attrs
        raise corrupt_shard_error(path, exc) from exc
    return data


def corrupt_shard_error(path: Path, exc: BaseException) -> ShardError:
    return ShardError(f"{path}: unreadable shard (truncated or corrupt HDF5 file: {type(exc).__name__}: {exc})")


def check_data_crc(dataset: h5py.Dataset, values: np.ndarray, path: Path) -> None:
    """Compare a numeric dataset's values with the CRC-32 written with them (older shards have none)."""
    crc = dataset.attrs.get(DATA_CRC_ATTR)
    if crc is not None and zlib.crc32(np.ascontiguousarray(values)) != int(crc):
        raise ShardError(f"{path}: dataset {dataset.name.lstrip('/')} fails its CRC-32 check (corrupt shard)")


def encode_path(path: str) -> bytes:
    """A path as the bytes to store: UTF-8, with undecodable file-name bytes (which ``os``
    listings carry as surrogate escapes) written back as they were, so nothing is lost."""
    if "\0" in path:
        raise ValueError(f"paths: {path!r} contains a NUL character")
    try:
        return path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise ValueError(f"paths: {path!r} is not encodable ({exc.reason})") from exc


def paths_crc32(paths, crc: int = 0) -> int:
    for p in paths:
        crc = zlib.crc32((p if isinstance(p, bytes) else encode_path(p)) + b"\0", crc)
    return crc


def decode_paths(values, crc, path: Path) -> list[str]:
    """Decode stored paths (see :func:`encode_path`); check them against the shard's CRC-32 when it has one."""
    if crc is not None and paths_crc32(values) != int(crc):
        raise ShardError(f"{path}: paths fail their CRC-32 check (corrupt shard)")
    return [v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v for v in values]
