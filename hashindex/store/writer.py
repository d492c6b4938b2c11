"""``ShardWriter``: append records to a shard store, one complete shard file at a time."""

from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from ..codes import as_packed_codes, check_bits, int_column
from ..durable import TMP_SUFFIX, DirectoryLock, replace_durably, write_json_atomic
from .format import (DATA_CRC_ATTR, FORMAT_NAME, FORMAT_VERSION, MANIFEST, PATHS_CRC_ATTR, SHARD_PATTERN, ShardError,
                     StoreInfo, encode_path, hdf5_image, memory_hdf5, paths_crc32, read_store_info,
                     verify_shard_data)

# HDF5 >= 1.10 object headers and superblock carry checksums; fletcher32 checksums every data
# chunk; the UTF-8 paths (kept in an unchecksummed global heap) get a CRC-32 attribute. A
# damaged shard then fails to read (ShardError) instead of returning altered records.
_LIBVER = "v110"
_CHECKSUM = {"fletcher32": True}


class ShardWriter:
    """Append records in batches; roll over to a new shard file every ``shard_size`` records.

    Ids are assigned consecutively from where the store ends unless given. With
    ``resume=True`` an existing store is continued after its last complete shard
    (see :attr:`num_records` for how many records it already holds); without it,
    a directory that already holds a store is refused rather than overwritten.
    Use as a context manager, or call :meth:`close` to complete the last shard; leaving the
    ``with`` block by an exception (Ctrl-C included) discards the open shard instead (:meth:`abort`),
    so a resumed run lays out its shards as an uninterrupted one would. Only one writer at a time:
    the store directory is locked (``flock``) until close, a second writer gets ``LockedError``.
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
        self._lock = DirectoryLock(self.directory, "shard store")
        try:
            self._open_store(requested, resume)
        except BaseException:
            self._lock.release()
            raise
        self._file: h5py.File | None = None
        self._tmp_path: Path | None = None
        self._count = 0
        self._first_id = self._next_id

    def _open_store(self, requested: StoreInfo, resume: bool) -> None:
        manifest = self.directory / MANIFEST
        if manifest.exists() and not resume:
            raise FileExistsError(
                f"{self.directory} already holds a shard store; resume it (resume=True, --resume) "
                "or choose an empty directory"
            )
        # One writer per store (the lock): what a previous writer left half-written is garbage now.
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
        # Shards on disk that the manifest does not list were completed after the last manifest
        # update (a crash between rename and manifest write): adopt them once every byte of their
        # data passes its checksum. A resume with nothing to adopt writes nothing.
        listed = {s["file"] for s in found.shards}
        unlisted = [path for path in sorted(self.directory.glob("part-*.h5")) if path.name not in listed]
        for path in unlisted:
            attrs = verify_shard_data(path, bits=found.bits)
            found.shards.append({"file": path.name, "count": attrs["count"], "first_id": attrs["first_id"],
                                 "last_id": attrs["last_id"]})
        if unlisted:
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
            with np.errstate(over="ignore"):
                batch["features"] = feats.astype(self.info.feature_dtype, copy=False)
            if not np.all(np.isfinite(batch["features"])):
                limit = np.finfo(self.info.feature_dtype).max
                raise ValueError(f"features: values up to {np.abs(feats).max():g} exceed the {self.info.feature_dtype} "
                                 f"range (±{limit:g}) of this store; create it with feature_dtype='float32'")
        if paths is not None:
            paths = [encode_path(os.fspath(p)) for p in paths]
            if len(paths) != n:
                raise ValueError(f"paths: expected {n} entries, got {len(paths)}")
            batch["paths"] = np.array(paths, dtype=object)
        return batch

    def _open_shard(self, first_id: int) -> None:
        index = len(self.info.shards)
        final = self.directory / SHARD_PATTERN.format(index)
        self._tmp_path = final.with_name(final.name + TMP_SUFFIX)
        f = memory_hdf5(self._tmp_path.name, _LIBVER)  # written to the disk only once complete
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
        self._file, self._count, self._first_id, self._paths_crc, self._crcs = f, 0, first_id, 0, {}

    def _append(self, part: dict) -> None:
        f, n = self._file, len(part["codes"])
        if self._count and ("paths" in f) != ("paths" in part):
            raise ValueError("paths must be given for every batch of a shard or for none")
        try:
            for name, values in part.items():
                if name == "paths" and "paths" not in f:
                    # No checksum filter: HDF5 filters refuse variable-length strings.
                    f.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"),
                                     chunks=(min(4096, self.shard_size),))
                ds = f[name]
                ds.resize(self._count + n, axis=0)
                ds[self._count :] = values
        except BaseException:
            self._roll_back()
            raise
        for name, values in part.items():
            if name == "paths":
                self._paths_crc = paths_crc32(values, self._paths_crc)
            else:
                stored = np.ascontiguousarray(values, dtype=f[name].dtype)
                self._crcs[name] = zlib.crc32(stored, self._crcs.get(name, 0))
        self._count += n
        self._next_id = int(part["ids"][-1]) + 1

    def _roll_back(self) -> None:
        """Shrink the open shard's datasets back to its complete records after a failed append;
        if even that fails, discard the shard (its records were never listed)."""
        try:
            if not self._count and "paths" in self._file:
                del self._file["paths"]  # created by the failed batch: the next may come without paths
            for name in self._file:
                self._file[name].resize(self._count, axis=0)
        except BaseException:
            self._discard_open_shard()
            self._next_id = self.info.next_id
            raise

    def _finish_shard(self) -> None:
        f, tmp = self._file, self._tmp_path
        final = tmp.with_name(tmp.name[: -len(TMP_SUFFIX)])
        try:
            f.attrs["count"] = self._count
            if "paths" in f:
                f.attrs[PATHS_CRC_ATTR] = self._paths_crc
            for name, crc in self._crcs.items():
                f[name].attrs[DATA_CRC_ATTR] = crc
            f.attrs["last_id"] = self._next_id - 1
            f.attrs["complete"] = True
            tmp.write_bytes(hdf5_image(f))  # a full disk raises OSError here
            # Read every byte back through its checksums: only an intact shard gets its real name.
            verify_shard_data(tmp, bits=self.bits)
            replace_durably(tmp, final)
        except BaseException:
            self._discard_open_shard()
            self._next_id = self.info.next_id
            raise
        self.info.shards.append({"file": final.name, "count": self._count, "first_id": self._first_id,
                                 "last_id": self._next_id - 1})
        self._file, self._tmp_path, self._count = None, None, 0
        write_json_atomic(self.directory / MANIFEST, self.info.to_json())

    def _discard_open_shard(self) -> None:
        f, tmp = self._file, self._tmp_path
        self._file, self._tmp_path, self._count = None, None, 0
        if f is not None:
            try:
                f.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away; its write errors no longer matter
                pass
        if tmp is not None:
            tmp.unlink(missing_ok=True)

    def close(self) -> StoreInfo:
        """Complete the open shard (if any records went into it), release the lock, return the store info."""
        try:
            if self._count:
                self._finish_shard()
            else:
                self._discard_open_shard()
        finally:
            self._lock.release()
        return self.info

    def abort(self) -> StoreInfo:
        """Discard the open shard (its records were never listed; a resume writes them again)
        and release the lock. The store keeps its complete shards."""
        try:
            self._discard_open_shard()
        finally:
            self._lock.release()
        return self.info

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
