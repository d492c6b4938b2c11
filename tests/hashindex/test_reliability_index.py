"""Saved indexes (issue #14): saves never touch what they did not write, untrusted or damaged
files fail with ``ShardError`` naming the file, loads survive a concurrent re-save, one saver at
a time; and searches with extreme arguments give results or clear errors."""

from __future__ import annotations

import json
import os
import textwrap
import time

import h5py
import numpy as np
import pytest

from hashindex import HashIndex, ShardError
from hashindex.durable import DirectoryLock, LockedError
from hashindex.testing import load_while_saving


def _index(rng, n=200, marker="a", bits=64):
    index = HashIndex(bits, "flat", metadata={"marker": marker})
    index.add(rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8), labels=rng.integers(0, 5, n),
              features=rng.normal(size=(n, 4)).astype(np.float32))
    return index


def _assert_same(got: HashIndex, want: HashIndex) -> None:
    assert got.metadata == want.metadata and len(got) == len(want)
    for a, b in [(got.labels, want.labels), (got.ids, want.ids), (got.features, want.features)]:
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ what a save may touch
def test_save_removes_only_versions_it_wrote(tmp_path, rng):
    ix = tmp_path / "ix"
    index = _index(rng)
    index.save(ix)
    user = ix / "v-1.2-release"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    for _ in range(3):
        index.save(ix)
    assert (user / "notes.txt").read_text() == "mine"
    assert len(list(ix.glob("v-*"))) == 3  # the user's, the current version and the one it replaced
    _assert_same(HashIndex.load(ix), index)


def test_save_refuses_a_directory_that_is_not_an_index(tmp_path, rng):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "v-2024").mkdir()
    (folder / "CURRENT").write_text("my current project\n")
    with pytest.raises(ShardError, match=r"photos: not a hashindex index directory"):
        _index(rng).save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["CURRENT", "v-2024"]
    assert (folder / "CURRENT").read_text() == "my current project\n"


def test_an_index_saved_before_the_marker_is_adopted(tmp_path, rng):
    """Indexes saved before the marker and checksums existed still load, and a save into one works."""
    ix = tmp_path / "ix"
    old = _index(rng, marker="old")
    target = old.save(ix)
    (ix / "hashindex-dir.json").unlink()
    meta = json.loads((target / "meta.json").read_text())
    del meta["checksums"], meta["crc32"]
    (target / "meta.json").write_text(json.dumps(meta))
    _assert_same(HashIndex.load(ix), old)
    new = _index(rng, marker="new")
    new.save(ix)
    _assert_same(HashIndex.load(ix), new)


# ------------------------------------------------------------------ untrusted or damaged files
@pytest.mark.parametrize("pointer", [b"../elsewhere/v-0123456789ab\n", b"/tmp/v-0123456789ab\n", b"\xff\xfe\x00junk",
                                     b"v-0123456789ab/../../x\n"])
def test_current_must_name_a_version_inside_the_directory(tmp_path, rng, pointer):
    ix = tmp_path / "ix"
    _index(rng).save(ix)
    (ix / "CURRENT").write_bytes(pointer)
    with pytest.raises(ShardError, match=r"ix/CURRENT: does not name a version directory"):
        HashIndex.load(ix)


@pytest.mark.parametrize("name", ["index.faiss", "data.h5", "meta.json"])
def test_every_single_bit_flip_in_a_saved_index_fails_its_load(tmp_path, rng, name):
    ix = tmp_path / "ix"
    target = _index(rng).save(ix)
    path = target / name
    original = path.read_bytes()
    positions = np.random.default_rng(7).choice(len(original) * 8, size=40, replace=False)
    for bit in positions:
        flipped = bytearray(original)
        flipped[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(flipped))
        with pytest.raises(ShardError, match=name.replace(".", r"\.")):
            HashIndex.load(ix)
    path.write_bytes(original)
    HashIndex.load(ix)


@pytest.mark.parametrize("damage", ["missing index.faiss", "truncated data.h5", "missing meta.json"])
def test_incomplete_versions_fail_naming_the_file(tmp_path, rng, damage):
    target = _index(rng).save(tmp_path / "ix")
    how, name = damage.split()
    if how == "missing":
        (target / name).unlink()
    else:
        os.truncate(target / name, (target / name).stat().st_size // 2)
    with pytest.raises(ShardError, match=rf"{target.name}/{name}"):
        HashIndex.load(tmp_path / "ix")


def test_index_data_reading_other_files_is_refused(tmp_path, rng):
    target = _index(rng, n=16).save(tmp_path / "ix")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(16, dtype=np.int64).tobytes())
    with h5py.File(target / "data.h5", "r+") as f:
        del f["ids"]
        f.create_dataset("ids", shape=(16,), dtype=np.int64, external=[(str(secret), 0, 128)])
    meta = json.loads((target / "meta.json").read_text())
    del meta["checksums"], meta["crc32"]  # as a crafted index would: no checksums to fail first
    (target / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ShardError, match=r"data\.h5: dataset 'ids' uses external raw storage"):
        HashIndex.load(tmp_path / "ix")


# ------------------------------------------------------------------ concurrency
_RESAVE_LOOP = textwrap.dedent("""
    import sys, time
    import numpy as np
    from hashindex import HashIndex
    rng = np.random.default_rng(1)
    versions = []
    for marker in "ab":
        index = HashIndex(64, metadata={"marker": marker})
        index.add(rng.integers(0, 256, size=(3000, 8), dtype=np.uint8), labels=rng.integers(0, 5, 3000),
                  features=rng.normal(size=(3000, 16)).astype(np.float32))
        versions.append(index)
    versions[0].save(sys.argv[1])
    print("ready", flush=True)
    stop = time.monotonic() + float(sys.argv[2])
    i = 0
    while time.monotonic() < stop:
        i += 1
        versions[i % 2].save(sys.argv[1])
    print(i, flush=True)
""")


def test_loads_succeed_while_another_process_re_saves(tmp_path):
    markers = set()

    def check(index):
        assert len(index) == 3000 and len(index.labels) == 3000
        markers.add(index.metadata["marker"])

    loads, saves = load_while_saving(_RESAVE_LOOP, tmp_path / "ix", 6, check)
    assert saves > 10 and loads > 10 and markers == {"a", "b"}


def test_a_second_saver_is_refused(tmp_path, rng):
    ix = tmp_path / "ix"
    index = _index(rng)
    index.save(ix)
    with DirectoryLock(ix, "index directory"):  # another saver in the middle of its save
        with pytest.raises(LockedError, match=r"ix: another process is writing this index directory"):
            _index(rng, marker="b").save(ix)
    _assert_same(HashIndex.load(ix), index)


# ------------------------------------------------------------------ extreme search arguments
def test_huge_radius_and_candidates_are_clamped(rng):
    index = _index(rng, n=300)
    codes, feats = rng.integers(0, 256, size=(3, 8), dtype=np.uint8), rng.normal(size=(3, 4))
    lims, D, I = index.range_search(codes, 2**31 - 1)
    assert np.diff(lims).tolist() == [300] * 3
    for radius in (2**31 - 1, 2**40):
        np.testing.assert_array_equal(index.search_rerank(codes, feats, k=10, radius=radius)[1],
                                      index.search_rerank(codes, feats, k=10, candidates=300)[1])
    start = time.perf_counter()
    np.testing.assert_array_equal(index.search_rerank(codes, feats, k=10, candidates=10**9)[1],
                                  index.search_rerank(codes, feats, k=10, candidates=300)[1])
    assert time.perf_counter() - start < 30  # an unclamped pool would allocate gigabytes first


@pytest.mark.parametrize("value,dtype", [(1e20, np.float32), (1e300, np.float64), (-3e38, np.float32)])
def test_rerank_with_huge_finite_query_features_returns_every_neighbour(rng, value, dtype):
    index = _index(rng, n=50)
    codes = rng.integers(0, 256, size=(2, 8), dtype=np.uint8)
    q = np.zeros((2, 4), dtype=dtype)
    q[:, 0] = value
    D, I = index.search_rerank(codes, q, k=50, candidates=50)
    assert (np.sort(I, axis=1) == np.arange(50)).all()  # no padding: the pool held all 50
    assert (D[:, 1:] >= D[:, :-1]).all()


def test_rerank_orders_huge_features_as_float64_brute_force(rng):
    """Features near 1e19: every squared distance overflows float32, the order must not change."""
    index = HashIndex(64)
    feats = (rng.normal(size=(80, 4)) * 1e19).astype(np.float32)
    index.add(rng.integers(0, 256, size=(80, 8), dtype=np.uint8), features=feats)
    q = (rng.normal(size=(3, 4)) * 1e19).astype(np.float32)
    D, I = index.search_rerank(rng.integers(0, 256, size=(3, 8), dtype=np.uint8), q, k=10, candidates=80)
    exact = np.linalg.norm(feats.astype(np.float64)[None] - q.astype(np.float64)[:, None], axis=2)
    np.testing.assert_array_equal(I, np.argsort(exact, axis=1)[:, :10])
    np.testing.assert_allclose(D, np.sort(exact, axis=1)[:, :10], rtol=1e-6)
