"""A saved index's directory: versions, the ``CURRENT`` pointer, its marker, lock and checksums.

Layout::

    DIR/hashindex-dir.json   marker: this directory belongs to a HashIndex; versions it wrote
    DIR/CURRENT              one line, the name of the version to load (swapped by atomic rename)
    DIR/v-<12 hex>/          index.faiss, data.h5, meta.json (with the CRC-32 of each file)
    DIR/v-<12 hex>/          or a delta version: delta.h5 and meta.json, whose ``chain`` names the
                             full version it builds on and the deltas between, oldest first

A delta version holds only what changed since its parent (ids removed, records added): a
load replays the chain on top of the full version. A save only ever removes versions listed
in the marker (never a user's ``v-1.2-release/``), keeps the version it replaces and every
version the kept ones build on (a reader may still be opening them), and refuses a directory
that holds other files but no marker, or a ``CURRENT`` it did not write.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
import zlib
from pathlib import Path

from .durable import replace_durably, write_json_atomic
from .store import ShardError

INDEX_FORMAT = "hashindex-index"  #: the ``format`` of a version's meta.json
MARKER = "hashindex-dir.json"
MARKER_FORMAT = "hashindex-index-dir"
CURRENT = "CURRENT"
META = "meta.json"
_VERSION = re.compile(r"v-[0-9a-f]{1,32}")


def _read_marker(directory: Path) -> list[str] | None:
    path = directory / MARKER
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        versions = [str(v) for v in payload["versions"]]
        ok = payload.get("format") == MARKER_FORMAT
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ShardError(f"{path}: unreadable index directory marker ({exc})") from exc
    if not ok or not all(_VERSION.fullmatch(v) for v in versions):
        raise ShardError(f"{path}: not a hashindex index directory marker")
    return versions


def _write_marker(directory: Path, versions: list[str]) -> None:
    write_json_atomic(directory / MARKER, {"format": MARKER_FORMAT, "versions": versions})


def read_current(directory: Path) -> Path:
    """The version directory ``CURRENT`` names; ``ShardError`` naming the file if it is junk or
    points anywhere but a version directory inside ``directory``."""
    pointer = directory / CURRENT
    if not pointer.exists():
        raise ShardError(f"{directory}: not a saved hashindex index (no {CURRENT} file)")
    raw = pointer.read_bytes()
    name = raw.decode("ascii", errors="replace").strip()
    if not _VERSION.fullmatch(name):
        raise ShardError(f"{pointer}: does not name a version directory of this index (holds {raw[:40]!r})")
    return directory / name


def _previous_versions(directory: Path) -> list[str]:
    """Versions this directory already holds, or ``ShardError`` if it is not an index directory."""
    versions = _read_marker(directory)
    if versions is not None:
        return versions
    entries = [p.name for p in directory.iterdir()]
    if not entries:
        return []
    # An index saved before the marker existed: adopt it if CURRENT names one of our versions.
    try:
        current = read_current(directory)
        legacy = json.loads((current / META).read_text(encoding="utf-8")).get("format") == INDEX_FORMAT
    except (OSError, ValueError):
        legacy = False
    if not legacy:
        raise ShardError(f"{directory}: not a hashindex index directory (it holds {sorted(entries)[:5]} and no "
                         f"{MARKER}); save into a new or empty directory")
    return [current.name]


def new_version(directory: Path) -> Path:
    """Record and create a fresh version directory (the caller holds the directory's lock)."""
    versions = _previous_versions(directory)
    name = f"v-{uuid.uuid4().hex[:12]}"
    _write_marker(directory, versions + [name])  # recorded first: a crash leaves only debris we own
    (directory / name).mkdir()
    return directory / name


def read_meta(version: Path) -> dict:
    """A version's meta.json, checked against its CRC-32 (``ShardError`` naming the file)."""
    try:
        return check_meta(json.loads((version / META).read_text(encoding="utf-8")), version / META)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"{version / META}: unreadable index metadata ({exc})") from exc


def version_chain(version: Path) -> list[str]:
    """The versions ``version`` is built from, oldest (a full version) first, itself last."""
    chain = [str(v) for v in read_meta(version).get("chain", [])]
    if not all(_VERSION.fullmatch(v) for v in chain):
        raise ShardError(f"{version / META}: its chain names something other than versions of this index")
    return chain + [version.name]


def publish_version(directory: Path, target: Path) -> None:
    """Point ``CURRENT`` at ``target``, then remove the versions this directory wrote except
    ``target``, the one it replaces (kept so that a reader opening it now still succeeds) and
    the versions either builds on."""
    try:
        previous = read_current(directory)
    except ShardError:
        previous = None  # the first save (or a pointer too damaged to name anything worth keeping)
    try:
        kept_before = [] if previous is None else version_chain(previous)
    except ShardError:
        kept_before = [previous.name]  # damaged metadata: keep it, though nothing it builds on is known
    tmp = directory / f"{CURRENT}.{target.name}.tmp"
    tmp.write_text(target.name + "\n")
    replace_durably(tmp, directory / CURRENT)
    versions = _read_marker(directory) or []
    needed = set(kept_before) | set(version_chain(target))
    keep = [v for v in versions if v in needed]
    for name in versions:
        if name not in keep:
            shutil.rmtree(directory / name, ignore_errors=True)
    _write_marker(directory, keep)
    for stale in directory.glob(f"{CURRENT}.v-*.tmp"):  # pointers of saves that died before the swap
        stale.unlink(missing_ok=True)


def file_crc32(path: Path, data: bytes | None = None) -> int:
    """CRC-32 of a file (or of ``data``, its contents already read)."""
    if data is not None:
        return zlib.crc32(data)
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            crc = zlib.crc32(block, crc)
    return crc


def seal_meta(meta: dict) -> dict:
    """``meta`` with a CRC-32 of its own canonical JSON, checked by :func:`check_meta`."""
    return {**meta, "crc32": zlib.crc32(json.dumps(meta, sort_keys=True).encode("utf-8"))}


def check_meta(meta: dict, path: Path) -> dict:
    """Verify the CRC-32 written by :func:`seal_meta` (indexes saved before it have none)."""
    meta = dict(meta)
    crc = meta.pop("crc32", None)
    if crc is not None and zlib.crc32(json.dumps(meta, sort_keys=True).encode("utf-8")) != crc:
        raise ShardError(f"{path}: fails its CRC-32 check (corrupt index metadata)")
    return meta


def check_file(path: Path, recorded: dict | None, data: bytes | None = None) -> None:
    """Compare a file with the size and CRC-32 its version's metadata recorded."""
    if data is None and not path.exists():
        raise ShardError(f"{path}: missing (the saved index is incomplete)")
    if recorded is None:
        return
    size = len(data) if data is not None else path.stat().st_size
    if size != recorded["size"] or file_crc32(path, data) != recorded["crc32"]:
        raise ShardError(f"{path}: fails its CRC-32 check ({size} bytes, {recorded['size']} written): "
                         "truncated or corrupt")
