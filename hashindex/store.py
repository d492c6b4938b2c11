"""HDF5 shard store: codes, F7 features, labels, ids and paths in ``part-NNNNN.h5`` files.

A store is a directory::

    manifest.json       bits, feature dim, class names, shard list with record counts
    part-00000.h5       datasets codes / labels / ids [/ features] [/ paths]
    part-00001.h5       attributes bits, complete, first_id, count
    ...

Each shard is written under ``part-NNNNN.h5.tmp`` and renamed into place (after
an fsync) only once it is complete, so a crash never leaves a half shard under a
real name; the manifest is rewritten atomically after every completed shard.
"""

from __future__ import annotations

import json
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from .durable import TMP_SUFFIX, replace_durably, write_json_atomic
from .codes import as_packed_codes, check_bits, int_column

FORMAT_NAME = "hashindex-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_PATTERN = "part-{:05d}.h5"
FIELDS = ("codes", "labels", "ids", "features", "paths")
# HDF5 >= 1.10 object headers and superblock carry checksums; fletcher32 checksums every data
# chunk; the UTF-8 paths (kept in an unchecksummed global heap) get a CRC-32 attribute. A
# damaged shard then fails to read (ShardError) instead of returning altered records.
_LIBVER = "v110"
_CHECKSUM = {"fletcher32": True}
_PATHS_CRC = "paths_crc32"


class ShardError(ValueError):
    """A shard or store that cannot be read or appended to; the message names the file."""


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


@dataclass
class StoreInfo:
    """What the manifest records about a store."""

    bits: int
    feature_dim: int | None = None
    feature_dtype: str = "float16"
    class_names: list[str] = field(default_factory=list)
    shards: list[dict] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    @property
    def num_records(self) -> int:
        return sum(s["count"] for s in self.shards)

    @property
    def next_id(self) -> int:
        # last_id, not first_id + count: ids may have gaps (skipped images) inside a shard.
        return max((s.get("last_id", s["first_id"] + s["count"] - 1) + 1 for s in self.shards), default=0)

    def to_json(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "bits": self.bits,
            "feature_dim": self.feature_dim,
            "feature_dtype": self.feature_dtype,
            "class_names": list(self.class_names),
            "num_records": self.num_records,
            "shards": self.shards,
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, payload: dict, source: Path) -> "StoreInfo":
        if payload.get("format") != FORMAT_NAME:
            raise ShardError(f"{source}: not a hashindex manifest (format={payload.get('format')!r})")
        if payload.get("version") != FORMAT_VERSION:
            raise ShardError(f"{source}: manifest version {payload.get('version')} is not supported")
        try:
            return cls(
                bits=int(payload["bits"]),
                feature_dim=payload.get("feature_dim"),
                feature_dtype=payload.get("feature_dtype", "float16"),
                class_names=list(payload.get("class_names", [])),
                shards=list(payload["shards"]),
                metadata=dict(payload.get("metadata", {})),
            )
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


class ShardWriter:
    """Append records in batches; roll over to a new shard file every ``shard_size`` records.

    Ids are assigned consecutively from where the store ends unless given. With
    ``resume=True`` an existing store is continued after its last complete shard
    (see :attr:`num_records` for how many records it already holds); without it,
    a directory that already holds a store is refused rather than overwritten.
    Use as a context manager, or call :meth:`close` to complete the last shard.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        bits: int,
        *,
        feature_dim: int | None = None,
        feature_dtype: str = "float16",
        class_names: Sequence[str] | None = None,
        shard_size: int = 100_000,
        resume: bool = False,
        metadata: dict | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.shard_size = int(shard_size)
        if self.shard_size <= 0:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        if np.dtype(feature_dtype) not in (np.float16, np.float32):
            raise ValueError(f"feature_dtype must be float16 or float32, got {feature_dtype!r}")
        requested = StoreInfo(
            bits=check_bits(bits),
            feature_dim=None if feature_dim is None else int(feature_dim),
            feature_dtype=np.dtype(feature_dtype).name,
            class_names=list(class_names or []),
            metadata=dict(metadata or {}),
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest = self.directory / MANIFEST
        if manifest.exists() and not resume:
            raise FileExistsError(
                f"{self.directory} already holds a shard store; pass resume=True to append "
                "to it or choose an empty directory"
            )
        # One writer per store: what a previous writer left half-written is garbage now.
        self.removed_temporary_files = self._remove_leftover_temporaries()
        if manifest.exists():
            self.info = self._check_resumable(read_store_info(self.directory), requested)
        else:
            existing = sorted(self.directory.glob("part-*.h5"))
            if existing:
                raise ShardError(f"{existing[0]}: shard files without {MANIFEST}; refusing to overwrite")
            self.info = requested
            write_json_atomic(manifest, self.info.to_json())
        self._next_id = self.info.next_id
        self._file: h5py.File | None = None
        self._tmp_path: Path | None = None
        self._count = 0
        self._first_id = self._next_id

    @property
    def bits(self) -> int:
        return self.info.bits

    @property
    def num_records(self) -> int:
        """Records written so far, in complete shards and the open one."""
        return self.info.num_records + self._count

    def _remove_leftover_temporaries(self) -> list[Path]:
        leftovers = sorted(self.directory.glob(f"*{TMP_SUFFIX}"))
        for path in leftovers:
            path.unlink()
        if leftovers:
            warnings.warn(
                f"removed {len(leftovers)} incomplete temporary file(s) left by an interrupted write "
                f"in {self.directory}: {', '.join(p.name for p in leftovers)}",
                stacklevel=3,
            )
        return leftovers

    def _check_resumable(self, found: StoreInfo, requested: StoreInfo) -> StoreInfo:
        for attr in ("bits", "feature_dim", "feature_dtype"):
            if getattr(found, attr) != getattr(requested, attr):
                raise ShardError(
                    f"{self.directory / MANIFEST}: cannot resume, store has {attr}={getattr(found, attr)} "
                    f"but the writer was asked for {attr}={getattr(requested, attr)}"
                )
        if requested.class_names and found.class_names != requested.class_names:
            raise ShardError(f"{self.directory / MANIFEST}: cannot resume, class names differ")
        # Shards on disk that the manifest does not list were completed after the
        # last manifest update (a crash between rename and manifest write): adopt them.
        listed = {s["file"] for s in found.shards}
        for path in sorted(self.directory.glob("part-*.h5")):
            if path.name not in listed:
                attrs = read_shard_attrs(path, bits=found.bits)
                found.shards.append({"file": path.name, "count": attrs["count"], "first_id": attrs["first_id"],
                                     "last_id": attrs["last_id"]})
        write_json_atomic(self.directory / MANIFEST, found.to_json())
        return found

    def add(self, codes, labels=None, features=None, paths=None, ids=None) -> np.ndarray:
        """Append a batch; returns the ids given to its records."""
        batch = self._validate(codes, labels, features, paths, ids)
        n = len(batch["codes"])
        start = 0
        while start < n:
            if self._file is None:
                self._open_shard(int(batch["ids"][start]))
            take = min(n - start, self.shard_size - self._count)
            self._append({k: v[start : start + take] for k, v in batch.items()})
            start += take
            if self._count >= self.shard_size:
                self._finish_shard()
        return batch["ids"]

    def _validate(self, codes, labels, features, paths, ids) -> dict:
        packed = as_packed_codes(codes, self.bits)
        n = len(packed)
        batch: dict = {"codes": packed}
        batch["labels"] = int_column(labels, n, "labels", default=-1)
        if ids is None:
            batch["ids"] = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        else:
            batch["ids"] = int_column(ids, n, "ids")
            if n and batch["ids"].min() < self._next_id:
                raise ValueError(f"ids must be increasing and >= {self._next_id}, got min {batch['ids'].min()}")
            if n > 1 and np.any(np.diff(batch["ids"]) <= 0):
                raise ValueError("ids must be strictly increasing within a batch")
        if (features is None) != (self.info.feature_dim is None):
            want = "no features" if self.info.feature_dim is None else f"features of dim {self.info.feature_dim}"
            raise ValueError(f"this store was created with {want}")
        if features is not None:
            feats = np.asarray(features)
            if feats.shape != (n, self.info.feature_dim):
                raise ValueError(f"features: expected shape ({n}, {self.info.feature_dim}), got {feats.shape}")
            if feats.dtype.kind not in "biuf":
                raise ValueError(f"features: expected real numbers, got dtype {feats.dtype}")
            if not np.all(np.isfinite(feats)):
                raise ValueError("features contain NaN or infinite values")
            batch["features"] = feats.astype(self.info.feature_dtype, copy=False)
        if paths is not None:
            paths = [os.fspath(p) for p in paths]
            if len(paths) != n:
                raise ValueError(f"paths: expected {n} entries, got {len(paths)}")
            batch["paths"] = np.array(paths, dtype=object)
        return batch

    def _open_shard(self, first_id: int) -> None:
        index = len(self.info.shards)
        final = self.directory / SHARD_PATTERN.format(index)
        self._tmp_path = final.with_name(final.name + TMP_SUFFIX)
        f = h5py.File(self._tmp_path, "w", libver=_LIBVER)
        nbytes = self.bits // 8
        chunk = min(self.shard_size, 65536)
        f.create_dataset("codes", shape=(0, nbytes), maxshape=(None, nbytes), dtype=np.uint8, chunks=(chunk, nbytes),
                         **_CHECKSUM)
        f.create_dataset("labels", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(chunk,), **_CHECKSUM)
        f.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(chunk,), **_CHECKSUM)
        if self.info.feature_dim is not None:
            d = self.info.feature_dim
            f.create_dataset(
                "features", shape=(0, d), maxshape=(None, d), dtype=self.info.feature_dtype,
                chunks=(max(1, min(chunk, (1 << 20) // (2 * d))), d), **_CHECKSUM,
            )
        f.attrs.update({"format": FORMAT_NAME, "version": FORMAT_VERSION, "bits": self.bits,
                        "first_id": first_id, "count": 0, "complete": False})
        self._file, self._count, self._first_id, self._paths_crc = f, 0, first_id, 0

    def _append(self, part: dict) -> None:
        f, n = self._file, len(part["codes"])
        for name, values in part.items():
            if name == "paths" and "paths" not in f:
                if self._count:
                    raise ValueError("paths must be given for every batch of a shard or for none")
                f.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"),
                                 chunks=(4096,))  # HDF5 filters refuse variable-length strings
            ds = f[name]
            ds.resize(self._count + n, axis=0)
            ds[self._count :] = values
            if name == "paths":
                self._paths_crc = _paths_crc32(values, self._paths_crc)
        if "paths" in f and "paths" not in part:
            raise ValueError("paths must be given for every batch of a shard or for none")
        self._count += n
        self._next_id = int(part["ids"][-1]) + 1

    def _finish_shard(self) -> None:
        f, tmp = self._file, self._tmp_path
        f.attrs["count"] = self._count
        if "paths" in f:
            f.attrs[_PATHS_CRC] = self._paths_crc
        f.attrs["last_id"] = self._next_id - 1
        f.attrs["complete"] = True
        f.close()
        final = tmp.with_name(tmp.name[: -len(TMP_SUFFIX)])
        replace_durably(tmp, final)
        self.info.shards.append({"file": final.name, "count": self._count, "first_id": self._first_id,
                                 "last_id": self._next_id - 1})
        write_json_atomic(self.directory / MANIFEST, self.info.to_json())
        self._file, self._tmp_path, self._count = None, None, 0

    def close(self) -> StoreInfo:
        """Complete the open shard (if any records went into it) and return the store info."""
        if self._file is not None:
            if self._count:
                self._finish_shard()
            else:
                self._file.close()
                self._tmp_path.unlink()
                self._file = None
        return self.info

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_shard_attrs(path: Path, bits: int | None = None) -> dict:
    """Open one shard, check it is complete and well formed, and return its attributes."""
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            if attrs.get("format") != FORMAT_NAME:
                raise ShardError(f"{path}: not a hashindex shard (foreign HDF5 file)")
            if not attrs.get("complete", False):
                raise ShardError(f"{path}: shard is not marked complete")
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
        raise _corrupt(path, exc) from exc
    if shapes["codes"] != (count, shard_bits // 8):
        raise ShardError(f"{path}: codes have shape {shapes['codes']}, expected ({count}, {shard_bits // 8})")
    for name, shape in shapes.items():
        if shape[0] != count:
            raise ShardError(f"{path}: dataset {name} has {shape[0]} rows, expected {count}")
    return {"count": count, "first_id": int(attrs["first_id"]),
            "last_id": int(attrs.get("last_id", int(attrs["first_id"]) + count - 1)),
            "bits": shard_bits, "fields": list(shapes)}


class ShardReader:
    """Read a shard store in order, validating every shard against the manifest.

    Iterating yields one :class:`Shard` per file; :meth:`read` concatenates the
    requested fields of all shards. Problems raise :class:`ShardError` naming the file.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ShardError(f"{self.directory}: no such shard directory")
        self.info = read_store_info(self.directory)
        self.leftover_temporary_files = sorted(self.directory.glob(f"*{TMP_SUFFIX}"))
        if self.leftover_temporary_files:
            warnings.warn(
                f"{self.directory}: ignoring incomplete temporary file(s) "
                f"{', '.join(p.name for p in self.leftover_temporary_files)} (a write in progress or an interrupted one)",
                stacklevel=2,
            )
        self._check_shards()

    @property
    def bits(self) -> int:
        return self.info.bits

    @property
    def class_names(self) -> list[str]:
        return self.info.class_names

    @property
    def feature_dim(self) -> int | None:
        return self.info.feature_dim

    @property
    def shard_paths(self) -> list[Path]:
        return [self.directory / s["file"] for s in self.info.shards]

    def __len__(self) -> int:
        return self.info.num_records

    def _check_shards(self) -> None:
        for entry, path in zip(self.info.shards, self.shard_paths):
            if not path.exists():
                raise ShardError(f"{path}: listed in {MANIFEST} but missing")
            attrs = read_shard_attrs(path, bits=self.bits)
            if attrs["count"] != entry["count"] or attrs["first_id"] != entry["first_id"]:
                raise ShardError(
                    f"{path}: holds {attrs['count']} records from id {attrs['first_id']}, "
                    f"manifest says {entry['count']} from id {entry['first_id']}"
                )
            if self.feature_dim is not None and "features" not in attrs["fields"]:
                raise ShardError(f"{path}: missing dataset features")

    def __iter__(self) -> Iterator[Shard]:
        for path in self.shard_paths:
            yield self.read_shard(path)

    def read_shard(self, path: Path, fields: Sequence[str] = FIELDS) -> Shard:
        try:
            with h5py.File(path, "r") as f:
                data = {name: f[name][()] for name in fields if name in f}
                if "paths" in data:
                    data["paths"] = _decode_paths(data["paths"], f.attrs.get(_PATHS_CRC), path)
        except ShardError:
            raise
        except Exception as exc:  # noqa: BLE001 - see read_shard_attrs
            raise _corrupt(path, exc) from exc
        paths = data.pop("paths", None)
        return Shard(path=path, paths=paths, **{k: data.get(k) for k in ("codes", "labels", "ids", "features")})

    def read(self, fields: Sequence[str] = ("codes", "labels", "ids", "features"), progress: bool = False) -> dict:
        """Concatenate ``fields`` over all shards into preallocated arrays (``paths`` as a list)."""
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; choose from {FIELDS}")
        n = len(self)
        out: dict = {}
        if "codes" in fields:
            out["codes"] = np.empty((n, self.bits // 8), dtype=np.uint8)
        for name in ("labels", "ids"):
            if name in fields:
                out[name] = np.empty(n, dtype=np.int64)
        if "features" in fields and self.feature_dim is not None:
            out["features"] = np.empty((n, self.feature_dim), dtype=self.info.feature_dtype)
        if "paths" in fields:
            out["paths"] = []
        shards = self.shard_paths
        if progress:
            from tqdm.auto import tqdm

            shards = tqdm(shards, desc=f"loading {self.directory.name}", unit="shard")
        offset = 0
        for path in shards:
            try:
                with h5py.File(path, "r") as f:
                    count = int(f.attrs["count"])
                    if count != len(f["codes"]):
                        raise ShardError(f"{path}: holds {len(f['codes'])} records, expected {count}")
                    for name, arr in out.items():
                        if name == "paths":
                            arr.extend(_decode_paths(f["paths"][()], f.attrs.get(_PATHS_CRC), path)
                                       if "paths" in f else [""] * count)
                        else:
                            f[name].read_direct(arr, dest_sel=np.s_[offset : offset + count])
            except ShardError:
                raise
            except Exception as exc:  # noqa: BLE001 - see read_shard_attrs
                raise _corrupt(path, exc) from exc
            offset += count
        if "ids" in out:
            _check_unique_ids(out["ids"], self.shard_paths, [s["count"] for s in self.info.shards])
        return out


def _corrupt(path: Path, exc: BaseException) -> ShardError:
    return ShardError(f"{path}: unreadable shard (truncated or corrupt HDF5 file: {type(exc).__name__}: {exc})")


def _paths_crc32(paths, crc: int = 0) -> int:
    for p in paths:
        crc = zlib.crc32(p.encode("utf-8") + b"\0", crc)
    return crc


def _decode_paths(values, crc, path: Path) -> list[str]:
    """Decode stored paths; check them against the shard's CRC-32 when it has one."""
    decoded = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
    if crc is not None and _paths_crc32(decoded) != int(crc):
        raise ShardError(f"{path}: paths fail their CRC-32 check (corrupt shard)")
    return decoded


def _check_unique_ids(ids: np.ndarray, shard_paths: list[Path], counts: list[int]) -> None:
    """Raise ``ShardError`` naming the shard files that share an id."""
    if len(ids) < 2 or np.all(ids[1:] > ids[:-1]):
        return
    values, counts_of = np.unique(ids, return_counts=True)
    if not (counts_of > 1).any():
        return
    dup = values[counts_of > 1]
    ends = np.cumsum(counts)
    files = sorted({shard_paths[int(np.searchsorted(ends, r, side="right"))].name
                    for r in np.flatnonzero(ids == dup[0])})
    where = "across shards " + " and ".join(files) if len(files) > 1 else f"within shard {files[0]}"
    raise ShardError(f"{shard_paths[0].parent}: duplicate ids {where} (e.g. id {int(dup[0])}; "
                     f"{len(dup)} duplicated in all: {dup[:5].tolist()})")
