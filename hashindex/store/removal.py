"""Records removed from a store: their ids, listed in the manifest, which :class:`ShardReader` leaves out.

Shard files are never rewritten: a removal adds ids to the manifest's ``removed_ids`` (one atomic
manifest write, under the store's writer lock), so an index rebuilt from the store does not bring
removed records back, and nothing else in the store changes.
"""

from __future__ import annotations

import os

import numpy as np

from ..durable import DirectoryLock
from .format import last_id, read_store_info, write_store_info
from .reader import ShardReader


def remove_from_store(directory: "str | os.PathLike", ids) -> int:
    """Mark the records stored under ``ids`` removed (ids the store does not hold, or has removed
    already, are ignored); returns how many were newly removed. ``LockedError`` while a writer runs."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    with DirectoryLock(directory, "shard store"):
        info = read_store_info(directory)
        files = [e["file"] for e in info.shards if ((ids >= e["first_id"]) & (ids <= last_id(e))).any()]
        held = ShardReader(directory, files=files).read(["ids"])["ids"] if files else np.empty(0, np.int64)
        new = np.intersect1d(ids, held)  # the reader already leaves out ids removed before
        if len(new):
            info.removed_ids = np.union1d(info.removed_ids, new).tolist()
            write_store_info(directory, info)
    return len(new)
