"""Shard store faults (issue #14): write errors of a full disk, exceptions inside a writer, damaged
unlisted shards, undecodable file names, float16 overflow, untrusted stores, two writers.

Full disks are simulated by injecting ``OSError(ENOSPC)`` where h5py writes; the real small-tmpfs
run is in ``test_reliability_cli.py``.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from hashindex import ShardError, ShardReader, ShardWriter
from hashindex.durable import LockedError

FIELDS = ("codes", "labels", "ids", "features", "paths")
SHARD = 7


def _records(rng, n):
    return {"codes": rng.integers(0, 256, size=(n, 8), dtype=np.uint8), "labels": rng.integers(0, 4, size=n),
            "features": rng.normal(size=(n, 6)).astype(np.float32), "paths": [f"c/img_{i}.png" for i in range(n)]}


def _batches(data, start, stop, step=5):
    for s in range(start, stop, step):
        yield {k: v[s : min(s + step, stop)] for k, v in data.items()}


def _writer(directory, resume=False):
    return ShardWriter(directory, 64, feature_dim=6, shard_size=SHARD, resume=resume)


def _resume_and_finish(directory, data):
    """Resume after a failure and write the records the store does not hold yet."""
    with _writer(directory, resume=True) as w:
        for batch in _batches(data, w.info.next_id, len(data["codes"])):
            w.add(**batch)


def _assert_store_is(directory, data):
    """The store holds exactly ``data`` with ids 0..n-1, cut into shards as an uninterrupted run would."""
    reader = ShardReader(directory)
    n = len(data["codes"])
    assert [s["count"] for s in reader.info.shards] == [SHARD] * (n // SHARD) + ([n % SHARD] if n % SHARD else [])
    out = reader.read(FIELDS)
    np.testing.assert_array_equal(out["ids"], np.arange(n))
    np.testing.assert_array_equal(out["codes"], data["codes"])
    np.testing.assert_array_equal(out["labels"], data["labels"])
    np.testing.assert_allclose(out["features"], data["features"], atol=1e-2)
    assert out["paths"] == list(data["paths"])
    assert not list(directory.glob("*.tmp"))


def _fail_on(monkeypatch, cls, name, after: int = 0):
    """Make ``cls.name`` raise ``OSError(ENOSPC)`` from its ``after``-th call on."""
    original, calls = getattr(cls, name), []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, failing)


@pytest.mark.parametrize("where", ["flush", "dataset write", "file write"])
def test_full_disk_surfaces_the_error_and_renames_nothing(tmp_path, rng, monkeypatch, where):
    data = _records(rng, 30)
    store = tmp_path / "s"
    with monkeypatch.context() as patch:
        with pytest.raises(OSError, match="No space left"):
            with _writer(store) as w:
                for i, batch in enumerate(_batches(data, 0, 30)):
                    if i == 2:  # a shard is complete; the second one is open
                        if where == "flush":
                            _fail_on(patch, h5py.File, "flush")
                        elif where == "dataset write":
                            _fail_on(patch, h5py.Dataset, "__setitem__")
                        else:  # the shard's image written to disk
                            _fail_on(patch, Path, "write_bytes")
                    w.add(**batch)
    assert sorted(p.name for p in store.iterdir()) == ["manifest.json", "part-00000.h5"]
    assert len(ShardReader(store)) == SHARD
    _resume_and_finish(store, data)
    _assert_store_is(store, data)


def test_a_shard_whose_bytes_on_disk_differ_never_gets_its_name(tmp_path, rng, monkeypatch):
    """What reaches the disk is read back through its checksums before the rename: a temporary
    file whose data chunk did not land (zeros, which pass fletcher32) is refused."""
    data = _records(rng, 14)
    original = Path.write_bytes

    def write_with_a_hole(self, image):
        written = original(self, image)
        if self.name.endswith(".h5.tmp"):
            with h5py.File(self, "r") as f:
                chunk = f["codes"].id.get_chunk_info(0)
            with open(self, "r+b") as f:
                f.seek(chunk.byte_offset)
                f.write(b"\0" * chunk.size)
        return written

    store = tmp_path / "s"
    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_bytes", write_with_a_hole)
        with pytest.raises(ShardError, match=r"part-00000\.h5\.tmp: dataset codes fails its CRC-32 check"):
            with _writer(store) as w:
                w.add(**data)
    assert sorted(p.name for p in store.iterdir()) == ["manifest.json"]
    _resume_and_finish(store, data)
    _assert_store_is(store, data)


def test_an_exception_in_the_with_block_discards_the_open_shard(tmp_path, rng):
    data = _records(rng, 30)
    store = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        with _writer(store) as w:
            for batch in _batches(data, 0, 20):
                w.add(**batch)
            raise KeyboardInterrupt  # Ctrl-C between batches: 14 records complete, 6 in the open shard
    assert sorted(p.name for p in store.iterdir()) == ["manifest.json", "part-00000.h5", "part-00001.h5"]
    _resume_and_finish(store, data)
    _assert_store_is(store, data)  # the same layout as an uninterrupted run


def test_a_failed_append_is_rolled_back_and_the_writer_goes_on(tmp_path, rng, monkeypatch):
    data = _records(rng, 30)
    store = tmp_path / "s"
    original = h5py.Dataset.__setitem__

    def fail_on_features(self, key, value):
        if self.name == "/features":
            raise OSError(errno.EIO, "injected I/O error")
        return original(self, key, value)

    with _writer(store) as w:
        batches = list(_batches(data, 0, 30))
        w.add(**batches[0])
        with monkeypatch.context() as patch:
            patch.setattr(h5py.Dataset, "__setitem__", fail_on_features)
            with pytest.raises(OSError, match="injected"):
                w.add(**batches[1])  # codes, labels, ids were written before features failed
        for batch in batches[1:]:
            w.add(**batch)
    _assert_store_is(store, data)


def test_an_unencodable_path_is_refused_before_anything_is_written(tmp_path, rng):
    data = _records(rng, 10)
    store = tmp_path / "s"
    with _writer(store) as w:
        w.add(**{k: v[:5] for k, v in data.items()})
        bad = {**{k: v[5:] for k, v in data.items()}, "paths": ["a\ud800.png", "b", "c", "d", "e"]}
        with pytest.raises(ValueError, match="not encodable"):
            w.add(**bad)
        with pytest.raises(ValueError, match="NUL"):
            w.add(**{**bad, "paths": ["a\0.png", "b", "c", "d", "e"]})
        w.add(**{k: v[5:] for k, v in data.items()})
    _assert_store_is(store, data)


def test_undecodable_file_names_are_stored_losslessly(tmp_path, rng):
    raw = [b"bad\xff.png", b"caf\xe9.png", "ok_é.png".encode()]
    names = [os.fsdecode(b) for b in raw]  # how os.listdir gives them: surrogate escapes
    data = {**_records(rng, 3), "paths": names}
    with _writer(tmp_path / "s") as w:
        w.add(**data)
    paths = ShardReader(tmp_path / "s").read(("paths",))["paths"]
    assert paths == names and [os.fsencode(p) for p in paths] == raw


def test_resume_refuses_an_unlisted_shard_whose_data_is_damaged(tmp_path, rng):
    data = _records(rng, 14)
    store = tmp_path / "s"
    with _writer(store) as w:
        w.add(**data)
    manifest = store / "manifest.json"
    payload = json.loads(manifest.read_text())
    payload["shards"] = payload["shards"][:1]  # a crash between the rename and the manifest update
    manifest.write_text(json.dumps(payload))
    with h5py.File(store / "part-00001.h5", "r") as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset
    with open(store / "part-00001.h5", "r+b") as f:  # a data byte the attributes do not cover
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))
    with pytest.raises(ShardError, match=r"part-00001\.h5"):
        _writer(store, resume=True)
    assert json.loads(manifest.read_text()) == payload  # nothing adopted


def test_resume_with_nothing_to_do_writes_nothing(tmp_path, rng):
    data = _records(rng, 14)
    with _writer(tmp_path / "s") as w:
        w.add(**data)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "s").iterdir()}
    _writer(tmp_path / "s", resume=True).close()
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "s").iterdir()} == before


def test_float16_store_rejects_features_it_cannot_hold(tmp_path, rng):
    data = _records(rng, 4)
    data["features"][2, 1] = 1e5
    with _writer(tmp_path / "s") as w:
        with pytest.raises(ValueError, match=r"100000 exceed the float16 range.*feature_dtype='float32'"):
            w.add(**data)
    with ShardWriter(tmp_path / "f32", 64, feature_dim=6, feature_dtype="float32") as w:
        w.add(**data)
    assert ShardReader(tmp_path / "f32").read(("features",))["features"][2, 1] == 1e5


# ------------------------------------------------------------------ untrusted stores
@pytest.fixture
def small_store(tmp_path, rng):
    with _writer(tmp_path / "s") as w:
        w.add(**_records(rng, 10))
    return tmp_path / "s"


@pytest.mark.parametrize("entry", ["../outside.h5", "/etc/passwd", "sub/part-00000.h5", ".."])
def test_manifest_entries_outside_the_store_are_refused(small_store, entry):
    manifest = small_store / "manifest.json"
    payload = json.loads(manifest.read_text())
    payload["shards"][0]["file"] = entry
    manifest.write_text(json.dumps(payload))
    with pytest.raises(ShardError, match=r"manifest\.json: shard entry .* not a plain file name"):
        ShardReader(small_store)
    with pytest.raises(ShardError, match="not a plain file name"):
        _writer(small_store, resume=True)


def _replace_dataset(path, name, **create):
    with h5py.File(path, "r+") as f:
        del f[name]
        if "link" in create:
            f[name] = create["link"]
        else:
            f.create_dataset(name, **create)


@pytest.mark.parametrize("kind", ["external link", "external storage", "virtual dataset"])
def test_shards_that_read_other_files_are_refused(small_store, tmp_path, kind):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"root:x:0:0:root:" * 8)
    shard = small_store / "part-00000.h5"
    if kind == "external link":
        with h5py.File(tmp_path / "other.h5", "w") as f:
            f["codes"] = np.zeros((7, 8), np.uint8)
        _replace_dataset(shard, "codes", link=h5py.ExternalLink(str(tmp_path / "other.h5"), "/codes"))
    elif kind == "external storage":
        _replace_dataset(shard, "codes", shape=(7, 8), dtype=np.uint8, external=[(str(secret), 0, 56)])
    else:
        layout = h5py.VirtualLayout(shape=(7, 8), dtype=np.uint8)
        with h5py.File(tmp_path / "other.h5", "w") as f:
            f["codes"] = np.zeros((7, 8), np.uint8)
        layout[:] = h5py.VirtualSource(str(tmp_path / "other.h5"), "codes", shape=(7, 8))
        with h5py.File(shard, "r+") as f:
            del f["codes"]
            f.create_virtual_dataset("codes", layout)
    with pytest.raises(ShardError, match=r"part-00000\.h5: .*codes"):
        ShardReader(small_store).read()


# ------------------------------------------------------------------ one writer at a time
def test_a_second_writer_is_refused_while_the_first_holds_the_store(tmp_path, rng):
    store = tmp_path / "s"
    data = _records(rng, 10)
    first = _writer(store)
    first.add(**data)
    with pytest.raises(LockedError, match="another process is writing this shard store"):
        _writer(store, resume=True)
    script = textwrap.dedent("""
        import sys
        from hashindex import ShardWriter
        from hashindex.durable import LockedError
        try:
            ShardWriter(sys.argv[1], 64, feature_dim=6, shard_size=7, resume=True)
        except LockedError as exc:
            print(exc)
            sys.exit(3)
    """)
    other = subprocess.run([sys.executable, "-c", script, str(store)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert other.returncode == 3 and "another process is writing" in other.stdout, other.stderr
    first.close()
    _assert_store_is(store, data)
    _writer(store, resume=True).close()  # the lock went with the first writer
