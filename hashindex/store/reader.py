"""``ShardReader``: read a shard store (or a subset of its shard files), validated against its manifest."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from ..durable import TMP_SUFFIX
from .format import (FIELDS, MANIFEST, PATHS_CRC_ATTR, Shard, ShardError, check_data_crc, corrupt_shard_error,
                     decode_paths, last_id, read_checked, read_shard_attrs, read_store_info)


class ShardReader:
    """Read a shard store in order, validating every shard against the manifest.

    Iterating yields one :class:`Shard` per file; :meth:`read` concatenates the
    requested fields of all shards. ``files`` (names listed in the manifest) restricts the
    reader to those shard files, in that order. Records removed from the store (see
    :mod:`.removal`) are left out of everything it reads and counts. Problems raise
    :class:`ShardError` naming the file.
    """

    def __init__(self, directory: str | os.PathLike, files: Sequence[str] | None = None) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ShardError(f"{self.directory}: no such shard directory")
        self.info = read_store_info(self.directory)
        #: The manifest entries of the shard files read: all of them, or those named by ``files``.
        self.entries: list[dict] = self.info.shards
        if files is not None:
            listed = {entry["file"]: entry for entry in self.info.shards}
            unlisted = [name for name in files if name not in listed]
            if unlisted:
                raise ShardError(f"{self.directory / unlisted[0]}: not listed in the store's {MANIFEST}")
            self.entries = [listed[name] for name in files]
        self.removed = np.asarray(self.info.removed_ids, dtype=np.int64)
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
        return [self.directory / s["file"] for s in self.entries]

    def __len__(self) -> int:
        """Records read (removed ones left out)."""
        return sum(s["count"] - self._removed_in(s) for s in self.entries)

    def _removed_in(self, entry: dict) -> int:
        """Removed ids within a shard's id range (ids increase through the store, so all are its own)."""
        return int(np.searchsorted(self.removed, last_id(entry), "right")
                   - np.searchsorted(self.removed, entry["first_id"]))

    def _check_shards(self) -> None:
        for entry, path in zip(self.entries, self.shard_paths):
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
        data = read_checked(path, tuple(fields) + (("ids",) if len(self.removed) else ()))
        if len(self.removed):
            data = _without_removed(data, self.removed, keep_ids="ids" in fields)
        paths = data.pop("paths", None)
        return Shard(path=path, paths=paths, **{k: data.get(k) for k in ("codes", "labels", "ids", "features")})

    def read(self, fields: Sequence[str] = ("codes", "labels", "ids", "features"), progress: bool = False) -> dict:
        """Concatenate ``fields`` over all shards into preallocated arrays (``paths`` as a list)."""
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; choose from {FIELDS}")
        n = sum(s["count"] for s in self.entries)  # removed records are read, then dropped
        asked, fields = fields, tuple(fields) + (("ids",) if len(self.removed) else ())
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

            shards = tqdm(shards, desc=f"loading {self.directory.name}", unit="shard", disable=None)
        offset = 0
        for path in shards:
            try:
                with h5py.File(path, "r") as f:
                    count = int(f.attrs["count"])
                    if count != len(f["codes"]):
                        raise ShardError(f"{path}: holds {len(f['codes'])} records, expected {count}")
                    for name, arr in out.items():
                        if name == "paths":
                            arr.extend(decode_paths(f["paths"][()], f.attrs.get(PATHS_CRC_ATTR), path)
                                       if "paths" in f else [""] * count)
                        else:
                            f[name].read_direct(arr, dest_sel=np.s_[offset : offset + count])
                            check_data_crc(f[name], arr[offset : offset + count], path)
            except ShardError:
                raise
            except Exception as exc:  # noqa: BLE001 - see read_shard_attrs
                raise corrupt_shard_error(path, exc) from exc
            offset += count
        if "ids" in out:
            _check_unique_ids(out["ids"], self.shard_paths, [s["count"] for s in self.entries])
        if len(self.removed):
            out = _without_removed(out, self.removed, keep_ids="ids" in asked)
        return out


def _without_removed(out: dict, removed: np.ndarray, keep_ids: bool) -> dict:
    """The records of ``out`` whose ids are not in ``removed`` (``ids`` itself dropped unless asked for)."""
    keep = ~np.isin(out["ids"], removed)
    if keep.all():
        return out if keep_ids else {k: v for k, v in out.items() if k != "ids"}
    return {name: [p for p, k in zip(values, keep) if k] if name == "paths" else values[keep]
            for name, values in out.items() if keep_ids or name != "ids"}


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
