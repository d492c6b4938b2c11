"""Delta saves (issue #16): ``save(delta=True)`` writes only what changed since the saved version,
a load replays the chain and gives back exactly the saved index, crashes and stale copies never
lose a version, the chain is compacted into a full version when it grows long, and
``edit_saved`` serialises writers on the latest version."""

from __future__ import annotations

import json
import os
import textwrap
import threading
import time

import numpy as np
import pytest

import hashindex.persistence as persistence
from hashindex import HashIndex, ShardError
from hashindex.durable import DirectoryLock, LockedError
from hashindex.persistence import edit_saved, load_chain
from hashindex.index_dir import MARKER, read_current, version_chain
from hashindex.rows import stored_codes
from hashindex.testing import assert_same_knn, brute_force_knn, load_while_saving, start_in_thread

SPECS = ["flat", "IVF8,nprobe=8"]


def _codes(rng, n):
    return rng.integers(0, 256, size=(n, 8), dtype=np.uint8)


def _built(rng, spec, n=400):
    index = HashIndex(64, spec)
    index.add(_codes(rng, n), labels=rng.integers(0, 5, n), features=rng.normal(size=(n, 4)).astype(np.float32))
    return index


def _files(version):
    return sorted(p.name for p in version.iterdir())


def _assert_equal_to_brute_force(loaded: HashIndex, want: HashIndex, codes: np.ndarray, rng) -> None:
    """Same records as ``want``, and exact kNN over ``codes`` (the records' codes in row order)."""
    for a, b in [(loaded.ids, want.ids), (loaded.labels, want.labels), (loaded.features, want.features)]:
        np.testing.assert_array_equal(a, b)
    assert loaded.class_names == want.class_names and loaded.metadata == want.metadata
    assert str(loaded.spec) == str(want.spec)
    queries = _codes(rng, 20)
    D_ref, rows_ref = brute_force_knn(queries, codes, 10)
    D, rows = loaded.search_rows(queries, 10)
    assert_same_knn(D_ref, rows_ref, D, rows, database=codes, queries=queries)
    np.testing.assert_array_equal(loaded.search(queries, k=10)[1], loaded.rows_to_ids(rows))


@pytest.mark.parametrize("spec", SPECS)
def test_a_delta_save_writes_only_the_changes_and_loads_back_exactly(tmp_path, rng, spec):
    index = _built(rng, spec, n=2000)
    full = index.save(tmp_path / "ix")
    expected = stored_codes(index.faiss_index, index.spec)
    new = _codes(rng, 30)
    index.add(new, labels=[7] * 30, features=rng.normal(size=(30, 4)).astype(np.float32))
    index.class_names = [f"c{i}" for i in range(8)]
    index.metadata["note"] = "added class 7"
    index.remove([3, 5, 2001])  # two saved rows and one added just now
    delta = index.save(tmp_path / "ix", delta=True)
    assert _files(delta) == ["delta.h5", "meta.json"]
    assert version_chain(delta) == [full.name, delta.name]
    written = sum(p.stat().st_size for p in full.iterdir())
    assert (delta / "delta.h5").stat().st_size < written / 10
    codes = np.concatenate([np.delete(expected, [3, 5], axis=0), np.delete(new, [1], axis=0)])
    _assert_equal_to_brute_force(HashIndex.load(tmp_path / "ix"), index, codes, rng)


@pytest.mark.parametrize("spec", SPECS)
def test_deltas_chain_and_reloaded_copies_extend_the_chain(tmp_path, rng, spec):
    index = _built(rng, spec)
    index.save(tmp_path / "ix")
    for step in range(3):
        loaded = HashIndex.load(tmp_path / "ix")
        loaded.add(_codes(rng, 5), labels=[step] * 5, features=rng.normal(size=(5, 4)).astype(np.float32))
        loaded.remove(loaded.ids[:2])
        version = loaded.save(tmp_path / "ix", delta=True)
    assert len(version_chain(version)) == 4 and _files(version) == ["delta.h5", "meta.json"]
    again = HashIndex.load(tmp_path / "ix")
    _assert_equal_to_brute_force(again, loaded, stored_codes(loaded.faiss_index, loaded.spec), rng)


def test_a_long_chain_or_a_large_change_is_compacted_into_a_full_version(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(persistence, "MAX_DELTAS", 2)
    index = _built(rng, "flat")
    index.save(tmp_path / "ix")
    kinds = []
    for _ in range(4):
        index.add(_codes(rng, 3), features=rng.normal(size=(3, 4)).astype(np.float32))
        kinds.append(_files(index.save(tmp_path / "ix", delta=True)))
    full = ["data.h5", "index.faiss", "meta.json"]
    assert kinds == [["delta.h5", "meta.json"], ["delta.h5", "meta.json"], full, ["delta.h5", "meta.json"]]
    index.add(_codes(rng, 200), features=rng.normal(size=(200, 4)).astype(np.float32))  # over a quarter
    assert _files(index.save(tmp_path / "ix", delta=True)) == full
    index.add(_codes(rng, 1), features=rng.normal(size=(1, 4)).astype(np.float32))
    assert _files(index.save(tmp_path / "ix")) == full  # a plain save is always full


def test_kinds_without_exact_replay_and_stale_copies_save_in_full(tmp_path, rng):
    hnsw = _built(rng, "HNSW8")
    hnsw.save(tmp_path / "hnsw")
    hnsw.add(_codes(rng, 2), features=rng.normal(size=(2, 4)).astype(np.float32))
    assert "index.faiss" in _files(hnsw.save(tmp_path / "hnsw", delta=True))

    first = _built(rng, "flat")
    first.save(tmp_path / "ix")
    stale = HashIndex.load(tmp_path / "ix")
    first.add(_codes(rng, 2), features=rng.normal(size=(2, 4)).astype(np.float32))
    first.save(tmp_path / "ix", delta=True)
    stale.add(_codes(rng, 1), features=rng.normal(size=(1, 4)).astype(np.float32))
    # Its base is no longer CURRENT: a delta on top of `first`'s would mix two histories.
    assert "index.faiss" in _files(stale.save(tmp_path / "ix", delta=True))
    assert len(HashIndex.load(tmp_path / "ix")) == 401
    first.add(_codes(rng, 1), features=rng.normal(size=(1, 4)).astype(np.float32))
    assert "index.faiss" in _files(first.save(tmp_path / "other", delta=True))  # another directory


def test_versions_a_reader_may_be_opening_and_their_chains_are_kept(tmp_path, rng):
    index = _built(rng, "flat")
    base = index.save(tmp_path / "ix")
    chain = [base.name]
    for _ in range(2):
        index.add(_codes(rng, 2), features=rng.normal(size=(2, 4)).astype(np.float32))
        chain.append(index.save(tmp_path / "ix", delta=True).name)
    previous = read_current(tmp_path / "ix")
    compacted = index.save(tmp_path / "ix")  # full: the previous delta and all it builds on stay
    marker = json.loads((tmp_path / "ix" / MARKER).read_text())["versions"]
    assert sorted(marker) == sorted(chain + [compacted.name])
    assert sorted(p.name for p in (tmp_path / "ix").glob("v-*")) == sorted(marker)
    old = load_chain(HashIndex, tmp_path / "ix", previous, None, "cpu")
    np.testing.assert_array_equal(old.ids, index.ids)
    index.save(tmp_path / "ix")  # now only the compacted version is the one replaced
    assert sorted(p.name for p in (tmp_path / "ix").glob("v-*")) == sorted(
        [compacted.name, read_current(tmp_path / "ix").name])


def test_a_delta_save_dying_before_the_swap_leaves_the_previous_version(tmp_path, rng, monkeypatch):
    index = _built(rng, "IVF8,nprobe=8")
    index.save(tmp_path / "ix")
    saved_ids = index.ids.copy()
    index.add(_codes(rng, 4), features=rng.normal(size=(4, 4)).astype(np.float32))

    def crash(*_):
        raise OSError("disk full")

    monkeypatch.setattr(persistence, "publish_version", crash)
    with pytest.raises(OSError, match="disk full"):
        index.save(tmp_path / "ix", delta=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(HashIndex.load(tmp_path / "ix").ids, saved_ids)
    version = index.save(tmp_path / "ix", delta=True)  # still a delta: CURRENT did not move
    assert _files(version) == ["delta.h5", "meta.json"]
    assert len(list((tmp_path / "ix").glob("v-*"))) == 2  # the dead save's debris is gone
    np.testing.assert_array_equal(HashIndex.load(tmp_path / "ix").ids, index.ids)


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing base"])
def test_a_damaged_delta_chain_fails_naming_the_file(tmp_path, rng, damage):
    index = _built(rng, "flat")
    base = index.save(tmp_path / "ix")
    index.add(_codes(rng, 4), features=rng.normal(size=(4, 4)).astype(np.float32))
    delta = index.save(tmp_path / "ix", delta=True)
    path = delta / "delta.h5"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
        pattern = r"delta\.h5: fails its CRC-32 check"
    elif damage == "truncate":
        path.write_bytes(bytes(data[:100]))
        pattern = r"delta\.h5: fails its CRC-32 check"
    else:
        os.remove(base / "meta.json")
        pattern = rf"{base.name}/meta\.json: unreadable index metadata"
    with pytest.raises(ShardError, match=pattern):
        HashIndex.load(tmp_path / "ix")


_DELTA_LOOP = textwrap.dedent("""
    import sys, time
    import numpy as np
    from hashindex import HashIndex
    rng = np.random.default_rng(1)
    index = HashIndex(64, "flat")
    index.add(rng.integers(0, 256, size=(3000, 8), dtype=np.uint8), labels=np.zeros(3000, int))
    index.save(sys.argv[1])
    print("ready", flush=True)
    stop, i = time.monotonic() + float(sys.argv[2]), 0
    while time.monotonic() < stop:
        i += 1
        index.add(rng.integers(0, 256, size=(7, 8), dtype=np.uint8), labels=np.full(7, 1))
        index.remove(index.ids[index.labels == 0][:3])
        index.save(sys.argv[1], delta=True)
    print(i, flush=True)
""")


def test_loads_succeed_while_another_process_saves_deltas(tmp_path):
    sizes = set()

    def check(index):
        step = (len(index) - 3000) // 4  # each step adds 7 and removes 3
        assert len(index) == 3000 + 4 * step and (index.labels == 1).sum() == 7 * step
        sizes.add(len(index))

    loads, saves = load_while_saving(_DELTA_LOOP, tmp_path / "ix", 4, check)
    assert saves > 10 and loads > 5 and len(sizes) > 2


def test_edit_saved_waits_for_the_other_writer_and_edits_the_latest_version(tmp_path, rng):
    ix = tmp_path / "ix"
    _built(rng, "flat").save(ix)
    stale = HashIndex.load(ix)
    inside, release = threading.Event(), threading.Event()

    def first_writer():
        with edit_saved(ix) as index:
            index.add(_codes(rng, 5), labels=[8] * 5, features=rng.normal(size=(5, 4)).astype(np.float32))
            inside.set()
            release.wait(30)

    def second_writer():
        with edit_saved(ix, stale, wait=30) as index:  # `stale` misses the first writer's records
            index.add(_codes(rng, 3), labels=[9] * 3, features=rng.normal(size=(3, 4)).astype(np.float32))
            return index

    first, _ = start_in_thread(first_writer)
    assert inside.wait(30)
    second, outcome = start_in_thread(second_writer)
    time.sleep(0.3)
    assert second.is_alive()  # waiting for the lock
    release.set()
    first.join(30)
    second.join(30)
    assert outcome["result"] is not stale and len(outcome["result"]) == 408
    saved = HashIndex.load(ix)
    assert (saved.labels == 8).sum() == 5 and (saved.labels == 9).sum() == 3 and len(saved) == 408
    assert _files(read_current(ix)) == ["delta.h5", "meta.json"]
    with DirectoryLock(ix, "index directory"):
        with pytest.raises(LockedError, match="another process is writing this index directory"):
            with edit_saved(ix, wait=0.1):
                pass


def test_an_empty_index_and_a_change_of_search_parameters_round_trip(tmp_path, rng):
    empty = HashIndex(64, "IVF8,nprobe=2")
    empty.save(tmp_path / "empty")
    loaded = HashIndex.load(tmp_path / "empty")
    loaded.set_search_params(nprobe=8)
    loaded.save(tmp_path / "empty", delta=True)
    again = HashIndex.load(tmp_path / "empty")
    assert len(again) == 0 and str(again.spec) == "IVF8,nprobe=8"
    index = _built(rng, "IVF8,nprobe=2")
    index.save(tmp_path / "ix")
    index.set_search_params(nprobe=8)
    assert _files(index.save(tmp_path / "ix", delta=True)) == ["delta.h5", "meta.json"]
    assert HashIndex.load(tmp_path / "ix").faiss_index.nprobe == 8
