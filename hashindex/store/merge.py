"""Stores written in parts (one per parallel worker) and merged into one, in order."""

from __future__ import annotations

import os
from pathlib import Path

from ..durable import fsync_path
from .format import SHARD_PATTERN, ShardError, StoreInfo, read_shard_attrs, read_store_info, write_store_info


def merge_store(target: str | os.PathLike, source: str | os.PathLike, metadata: dict | None = None, *,
                hint: str = "") -> StoreInfo:
    """Move the shard files of store ``source`` into store ``target`` as its next parts, then
    rewrite ``target``'s manifest (with ``metadata`` as its metadata, when given) in one write.

    Idempotent: after a crash between the renames and the manifest write, files already moved
    are recognised (same record count and first id) and the merge completes. ``hint`` ends the
    error raised when a file is neither in ``source`` nor recognisable in ``target``.
    """
    target, source = Path(target), Path(source)
    info, part = read_store_info(target), read_store_info(source)
    if (part.bits, part.feature_dim) != (info.bits, info.feature_dim):
        raise ShardError(f"{source}: holds {part.bits}-bit codes with feature dim {part.feature_dim}, "
                         f"{target} holds {info.bits}-bit codes with feature dim {info.feature_dim}")
    base = len(info.shards)
    for j, entry in enumerate(part.shards):
        src, dst = source / entry["file"], target / SHARD_PATTERN.format(base + j)
        if src.exists():
            os.replace(src, dst)
        else:
            attrs = read_shard_attrs(dst, bits=info.bits) if dst.exists() else None
            if attrs is None or (attrs["count"], attrs["first_id"]) != (entry["count"], entry["first_id"]):
                raise ShardError(f"{src}: missing, and {dst} is not its merged copy{hint}")
        info.shards.append({**entry, "file": dst.name})
    fsync_path(target)
    if metadata is not None:
        info.metadata = metadata
    write_store_info(target, info)
    return info
