"""HDF5 shard store: codes, F7 features, labels, ids and paths in ``part-NNNNN.h5`` files.

A store is a directory::

    manifest.json       bits, feature dim, class names, shard list with record counts
    part-00000.h5       datasets codes / labels / ids [/ features] [/ paths]
    part-00001.h5       attributes bits, complete, first_id, count
    ...

Each shard is written under ``part-NNNNN.h5.tmp`` and renamed into place (after
an fsync) only once it is complete, so a crash never leaves a half shard under a
real name; the manifest is rewritten atomically after every completed shard.

This package is the only code that reads or writes shard files and manifests:
:mod:`.format` (manifest, shard attributes), :mod:`.writer`, :mod:`.reader`,
:mod:`.classes` (a store's growing class list), :mod:`.removal` (records removed) and
:mod:`.merge` (stores written in parts by parallel workers, merged into one).
"""

from .format import (FIELDS, FORMAT_NAME, FORMAT_VERSION, MANIFEST, SHARD_PATTERN, Shard, ShardError, StoreInfo,
                     read_shard_attrs, read_store_info, write_store_info)
from .classes import extend_class_names
from .merge import merge_store
from .removal import remove_from_store
from .reader import ShardReader
from .writer import ShardWriter

__all__ = ["FIELDS", "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "SHARD_PATTERN", "Shard", "ShardError",
           "ShardReader", "ShardWriter", "StoreInfo", "extend_class_names", "merge_store", "read_shard_attrs",
           "read_store_info", "remove_from_store", "write_store_info"]
