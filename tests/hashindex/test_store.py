import json
import zlib

import h5py
import numpy as np
import pytest

from hashindex import HashIndex, ShardError, ShardReader, ShardWriter


def _records(rng, n, bits=64, d=6):
    return {
        "codes": rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8),
        "labels": rng.integers(0, 4, size=n),
        "features": rng.normal(size=(n, d)).astype(np.float32),
        "paths": [f"class/img_{i}é.png" for i in range(n)],
    }


def _write(directory, rng, n=30, batch=10, shard_size=7, **kw):
    data = _records(rng, n)
    with ShardWriter(directory, 64, feature_dim=6, class_names=["a", "b", "c", "d"], shard_size=shard_size, **kw) as w:
        for s in range(0, n, batch):
            w.add(**{k: v[s : s + batch] for k, v in data.items()})
    return data


def test_round_trip_with_rollover(tmp_path, rng):
    data = _write(tmp_path / "s", rng)
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == ["manifest.json"] + [f"part-{i:05d}.h5" for i in range(5)]
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert [s["count"] for s in manifest["shards"]] == [7, 7, 7, 7, 2]
    assert manifest["bits"] == 64 and manifest["feature_dim"] == 6 and manifest["class_names"] == ["a", "b", "c", "d"]
    reader = ShardReader(tmp_path / "s")
    out = reader.read(("codes", "labels", "ids", "features", "paths"))
    np.testing.assert_array_equal(out["codes"], data["codes"])
    np.testing.assert_array_equal(out["labels"], data["labels"])
    np.testing.assert_array_equal(out["ids"], np.arange(30))
    np.testing.assert_allclose(out["features"], data["features"], atol=1e-2)  # float16 storage
    assert out["features"].dtype == np.float16
    assert out["paths"] == data["paths"]
    assert [len(s) for s in reader] == [7, 7, 7, 7, 2]
    for shard in ShardReader(tmp_path / "s"):
        with h5py.File(shard.path) as f:
            assert f.attrs["complete"] and f.attrs["bits"] == 64


def test_open_shard_reaches_the_disk_only_when_complete(tmp_path, rng):
    data = _records(rng, 10)
    w = ShardWriter(tmp_path / "s", 64, feature_dim=6, shard_size=7)
    w.add(**data)
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == ["manifest.json", "part-00000.h5"]  # the open shard is built in memory
    (tmp_path / "s" / "part-00001.h5.tmp").write_bytes(b"\x89HDF")  # as a finish cut short leaves it
    with pytest.warns(UserWarning, match="ignoring incomplete temporary file"):
        assert len(ShardReader(tmp_path / "s")) == 7  # readers see complete shards only
    w.close()
    assert len(ShardReader(tmp_path / "s")) == 10


def test_resume_after_crash_drops_the_partial_shard(tmp_path, rng):
    data = _records(rng, 20)
    w = ShardWriter(tmp_path / "s", 64, feature_dim=6, shard_size=7)
    w.add(**{k: v[:10] for k, v in data.items()})
    w._file.close()  # simulate a crash while the open shard's image was being written: a torn
    (tmp_path / "s" / "part-00001.h5.tmp").write_bytes(b"\x89HDF")  # temporary file, and no lock
    w._lock.release()
    with pytest.warns(UserWarning, match="ignoring incomplete temporary"):
        assert len(ShardReader(tmp_path / "s")) == 7
    with pytest.raises(FileExistsError, match="resume=True"):
        ShardWriter(tmp_path / "s", 64, feature_dim=6)
    with pytest.warns(UserWarning, match="removed 1 incomplete temporary"):
        w = ShardWriter(tmp_path / "s", 64, feature_dim=6, shard_size=7, resume=True)
    assert w.num_records == 7
    w.add(**{k: v[7:] for k, v in data.items()})
    w.close()
    out = ShardReader(tmp_path / "s").read()
    np.testing.assert_array_equal(out["ids"], np.arange(20))
    np.testing.assert_array_equal(out["codes"], data["codes"])


def test_resume_adopts_a_shard_renamed_before_the_manifest_update(tmp_path, rng):
    _write(tmp_path / "s", rng, n=14, shard_size=7)
    manifest = tmp_path / "s" / "manifest.json"
    payload = json.loads(manifest.read_text())
    payload["shards"] = payload["shards"][:1]  # crash between rename and manifest write
    manifest.write_text(json.dumps(payload))
    w = ShardWriter(tmp_path / "s", 64, feature_dim=6, shard_size=7, resume=True)
    assert w.num_records == 14
    w.close()
    assert len(ShardReader(tmp_path / "s")) == 14


def test_resume_with_other_bits_is_refused(tmp_path, rng):
    _write(tmp_path / "s", rng, n=7)
    with pytest.raises(ShardError, match="store has bits=64 but the writer was asked for bits=32"):
        ShardWriter(tmp_path / "s", 32, feature_dim=6, resume=True)


def test_writer_input_errors_leave_store_intact(tmp_path, rng):
    data = _records(rng, 5)
    with ShardWriter(tmp_path / "s", 64, feature_dim=6, shard_size=100) as w:
        w.add(**data)
        bad = [
            (dict(data, features=data["features"][:, :3]), r"features: expected shape \(5, 6\)"),
            (dict(data, features=np.full((5, 6), np.nan)), "NaN"),
            (dict(data, paths=data["paths"][:2]), "paths: expected 5 entries"),
            (dict(data, labels=np.ones(5) * 0.5), "expected integers"),
            (dict(data, codes=data["codes"][:, :4]), "wrong code width 4"),
            (dict(data, ids=[0, 1, 2, 3, 4]), "ids must be increasing and >= 5"),
        ]
        for kwargs, message in bad:
            with pytest.raises(ValueError, match=message):
                w.add(**kwargs)
    out = ShardReader(tmp_path / "s").read()
    np.testing.assert_array_equal(out["codes"], data["codes"])


def _first_shard(tmp_path, rng):
    _write(tmp_path / "s", rng, n=14, shard_size=7)
    return tmp_path / "s" / "part-00000.h5"


def test_truncated_shard_is_named(tmp_path, rng):
    shard = _first_shard(tmp_path, rng)
    shard.write_bytes(shard.read_bytes()[:500])
    with pytest.raises(ShardError, match="part-00000.h5: unreadable shard"):
        ShardReader(tmp_path / "s")


def test_foreign_hdf5_file_is_named(tmp_path, rng):
    shard = _first_shard(tmp_path, rng)
    with h5py.File(shard, "w") as f:
        f.create_dataset("something", data=np.arange(3))
    with pytest.raises(ShardError, match="part-00000.h5: not a hashindex shard"):
        ShardReader(tmp_path / "s")


def test_mismatched_bits_is_named(tmp_path, rng):
    shard = _first_shard(tmp_path, rng)
    with h5py.File(shard, "a") as f:
        f.attrs["bits"] = 32
    with pytest.raises(ShardError, match="part-00000.h5: shard holds 32-bit codes, store expects 64-bit"):
        ShardReader(tmp_path / "s")


def test_missing_dataset_is_named(tmp_path, rng):
    shard = _first_shard(tmp_path, rng)
    with h5py.File(shard, "a") as f:
        del f["labels"]
    with pytest.raises(ShardError, match="part-00000.h5: missing dataset"):
        ShardReader(tmp_path / "s")


def test_duplicate_ids_across_shards_are_named(tmp_path, rng):
    _first_shard(tmp_path, rng)
    with h5py.File(tmp_path / "s" / "part-00001.h5", "a") as f:
        f["ids"][:] = np.arange(7)  # same ids as part-00000, in a well-formed shard (checksum updated)
        f["ids"].attrs["crc32"] = zlib.crc32(np.arange(7, dtype=np.int64))
    with pytest.raises(ShardError, match="duplicate ids across shards"):
        ShardReader(tmp_path / "s").read()


def test_missing_manifest_and_directory(tmp_path):
    with pytest.raises(ShardError, match="no such shard directory"):
        ShardReader(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no manifest"):
        ShardReader(tmp_path / "empty")


def test_index_from_shards(tmp_path, rng):
    data = _write(tmp_path / "s", rng)
    index = HashIndex.from_shards(tmp_path / "s", spec="flat", progress=False)
    assert len(index) == 30 and index.class_names == ["a", "b", "c", "d"] and index.feature_dim == 6
    np.testing.assert_array_equal(index.labels, data["labels"])
    D, I = index.search(data["codes"][:5], k=1)
    assert (D[:, 0] == 0).all()
    bare = HashIndex.from_shards(tmp_path / "s", features=False, progress=False)
    assert bare.features is None


def test_resume_after_ids_with_gaps_continues_after_the_last_id(tmp_path):
    # Skipped images leave gaps: a shard holding ids 0, 2, 4 ends at 4, not at first_id + count.
    with ShardWriter(tmp_path / "s", 8, shard_size=3) as writer:
        writer.add(np.zeros((3, 1), np.uint8), ids=[0, 2, 4])
    writer = ShardWriter(tmp_path / "s", 8, shard_size=3, resume=True)
    assert writer.info.next_id == 5
    with pytest.raises(ValueError, match=">= 5"):
        writer.add(np.zeros((1, 1), np.uint8), ids=[4])
    writer.add(np.zeros((1, 1), np.uint8), ids=[5])
    writer.close()
    np.testing.assert_array_equal(ShardReader(tmp_path / "s").read(["ids"])["ids"], [0, 2, 4, 5])
