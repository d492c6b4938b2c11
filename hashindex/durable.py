"""Durable file writes: temporary file, fsync, atomic rename (the store, index and checkpoints use them)."""

from __future__ import annotations

import json
import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, final: Path) -> None:
    """fsync ``tmp``, rename it over ``final`` and fsync the directory."""
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(final.parent)


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON to ``path`` via a temporary file and an atomic rename."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    replace_durably(tmp, path)
