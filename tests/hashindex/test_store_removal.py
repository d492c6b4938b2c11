"""Records removed from a store (issue #16): every read leaves them out, the shard files are not
touched, later writers keep the list, and a removal waits for no one (one clear error)."""

from __future__ import annotations

import numpy as np
import pytest

from hashindex import HashIndex, ShardReader, ShardWriter, read_store_info
from hashindex.durable import LockedError
from hashindex.store import remove_from_store


def _store(path, rng, n=25, shard_size=10):
    codes = rng.integers(0, 256, size=(n, 8), dtype=np.uint8)
    with ShardWriter(path, 64, feature_dim=3, shard_size=shard_size) as writer:
        writer.add(codes, labels=np.arange(n) % 3, features=rng.normal(size=(n, 3)), paths=[f"p{i}" for i in range(n)])
    return codes


def test_removed_records_are_left_out_of_every_read(tmp_path, rng):
    codes = _store(tmp_path / "s", rng)
    files = {p.name: p.read_bytes() for p in (tmp_path / "s").glob("part-*.h5")}
    assert remove_from_store(tmp_path / "s", [3, 12, 13, 99, 3]) == 3  # 99 is not stored
    assert remove_from_store(tmp_path / "s", [3, 4]) == 1  # 3 is removed already
    keep = np.setdiff1d(np.arange(25), [3, 4, 12, 13])
    reader = ShardReader(tmp_path / "s")
    assert len(reader) == 21 and [len(shard) for shard in reader] == [8, 8, 5]
    data = reader.read(("codes", "labels", "ids", "features", "paths"))
    np.testing.assert_array_equal(data["ids"], keep)
    np.testing.assert_array_equal(data["codes"], codes[keep])
    np.testing.assert_array_equal(data["labels"], keep % 3)
    assert data["paths"] == [f"p{i}" for i in keep] and len(data["features"]) == 21
    assert set(reader.read(("codes",))) == {"codes"} and len(reader.read(("codes",))["codes"]) == 21
    second = ShardReader(tmp_path / "s", files=["part-00001.h5"])
    assert len(second) == 8 and second.read(("ids",))["ids"].tolist() == [10, 11, 14, 15, 16, 17, 18, 19]
    np.testing.assert_array_equal(np.sort(HashIndex.from_shards(tmp_path / "s", progress=False).ids), keep)
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").glob("part-*.h5")} == files


def test_a_resumed_writer_keeps_the_removals(tmp_path, rng):
    _store(tmp_path / "s", rng)
    remove_from_store(tmp_path / "s", [0, 24])
    with ShardWriter(tmp_path / "s", 64, feature_dim=3, shard_size=10, resume=True) as writer:
        writer.add(rng.integers(0, 256, size=(5, 8), dtype=np.uint8), features=rng.normal(size=(5, 3)))
    info = read_store_info(tmp_path / "s")
    assert info.removed_ids == [0, 24] and info.num_records == 30
    assert ShardReader(tmp_path / "s").read(("ids",))["ids"].tolist() == list(range(1, 24)) + list(range(25, 30))


def test_a_removal_while_a_writer_runs_is_refused_and_changes_nothing(tmp_path, rng):
    _store(tmp_path / "s", rng)
    with ShardWriter(tmp_path / "s", 64, feature_dim=3, resume=True):
        with pytest.raises(LockedError, match="another process is writing this shard store"):
            remove_from_store(tmp_path / "s", [1])
    assert read_store_info(tmp_path / "s").removed_ids == [] and len(ShardReader(tmp_path / "s")) == 25
