"""Growing a store's class list: new class names are appended, existing ones keep their label."""

from __future__ import annotations

import os
from typing import Sequence

from .format import MANIFEST, ShardError, read_store_info, write_store_info


def extend_class_names(directory: "str | os.PathLike", names: Sequence[str]) -> list[str]:
    """Append the ``names`` the store does not list yet to its class names (manifest rewritten
    atomically) and return the whole list; a name's label is its position in that list."""
    info = read_store_info(directory)
    if len(set(info.class_names)) != len(info.class_names):
        raise ShardError(f"{os.path.join(directory, MANIFEST)}: duplicate class names {info.class_names}")
    new = [name for name in dict.fromkeys(names) if name not in info.class_names]
    if new:
        info.class_names = info.class_names + new
        write_store_info(directory, info)
    return list(info.class_names)
