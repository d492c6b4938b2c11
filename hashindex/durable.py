"""Durable file writes: temporary file, fsync, atomic rename (the store, index and checkpoints use them)."""

from __future__ import annotations

import json
import os
import time
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
    try:
        tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        replace_durably(tmp, path)
    except BaseException:  # a full disk or Ctrl-C: leave no half-written temporary file behind
        tmp.unlink(missing_ok=True)
        raise


class LockedError(OSError):
    """Another process (or another writer in this one) holds a directory's write lock."""


class DirectoryLock:
    """An exclusive ``flock`` on a directory, held until :meth:`release`; taken at once or, with
    ``wait`` seconds, as soon as another holder lets go within that time (else ``LockedError``).

    The lock is taken on the directory itself (no lock file), so a read-only store can still
    be locked by a writer that finds nothing to do. The kernel drops it when the process dies.
    """

    def __init__(self, directory: Path, what: str, wait: float = 0.0) -> None:
        import fcntl

        self.directory = Path(directory)
        self._fd: int | None = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
            time.sleep(0.02)
        self.release()
        raise LockedError(f"{self.directory}: another process is writing this {what}; "
                          "wait for it to finish (or stop it) and retry")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "DirectoryLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
