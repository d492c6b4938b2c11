"""Export to ann-benchmarks HDF5 and raw Faiss, checked against brute force and the index itself."""

import csv

import faiss
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from hashapp.cli import main
from hashindex import HashIndex, pack_bits
from hashindex.export import export_ann_benchmarks, export_faiss
from hashindex.testing import assert_same_knn, brute_force_knn, tie_heavy_codes


@pytest.fixture
def saved(rng, tmp_path):
    db = np.concatenate([tie_heavy_codes(rng, 400, 48), rng.integers(0, 256, (400, 6), np.uint8)])
    index = HashIndex(48, "IVF8,nprobe=2", class_names=["a", "b", "c"])  # 48 bits: stored padded to 64
    index.add(db, labels=rng.integers(-1, 3, len(db)), ids=np.arange(len(db)) * 5)
    index.save(tmp_path / "ix")
    return tmp_path / "ix", db


def test_ann_benchmarks_file_is_a_hamming_dataset_with_exact_neighbours(saved, tmp_path):
    index_dir, db = saved
    result = CliRunner().invoke(main, ["export", str(index_dir), str(tmp_path / "out.hdf5"), "--format",
                                       "ann-benchmarks", "--queries", "50", "--count", "20"])
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "out.hdf5", "r") as f:
        assert dict(f.attrs) == {"type": "dense", "distance": "hamming", "point_type": "bit", "dimension": 48}
        train, test = f["train"][()], f["test"][()]
        neighbors, distances = f["neighbors"][()], f["distances"][()]
    assert train.dtype == bool and train.shape == (750, 48) and test.shape == (50, 48)
    assert neighbors.dtype == np.int32 and distances.dtype == np.float32 and neighbors.shape == (50, 20)
    train_codes, test_codes = pack_bits(train), pack_bits(test)
    both = np.concatenate([train_codes, test_codes])
    assert sorted(map(bytes, both)) == sorted(map(bytes, db))  # test is held out of train, nothing lost
    assert_same_knn(*brute_force_knn(test_codes, train_codes, 20), distances.astype(np.int32),
                    neighbors.astype(np.int64), database=train_codes, queries=test_codes)


def test_faiss_export_searches_like_the_index(saved, tmp_path):
    index_dir, db = saved
    index = HashIndex.load(index_dir)
    export_faiss(index, tmp_path / "raw")
    raw = faiss.read_index_binary(str(tmp_path / "raw" / "index.faiss"))
    raw.nprobe = 2
    queries = np.zeros((10, 8), np.uint8)
    queries[:, :6] = db[:10]
    D, rows = raw.search(queries, 5)
    with open(tmp_path / "raw" / "rows.csv", newline="") as f:
        table = list(csv.DictReader(f))
    ids = np.array([int(r["id"]) for r in table])
    D_ref, I_ref = index.search(db[:10], k=5)
    np.testing.assert_array_equal(D, D_ref)
    np.testing.assert_array_equal(ids[rows], I_ref)
    assert [r["class"] for r in table] == [index.class_names[lab] if lab >= 0 else "" for lab in index.labels]


def test_bad_export_requests(saved, tmp_path):
    index_dir, _ = saved
    index = HashIndex.load(index_dir)
    with pytest.raises(ValueError, match="queries must be between 1 and 799"):
        export_ann_benchmarks(index, tmp_path / "x.hdf5", queries=800)
    assert not (tmp_path / "x.hdf5").exists()
    hashed = HashIndex(64, "Hash16")
    hashed.add(np.zeros((5, 8), np.uint8))
    with pytest.raises(ValueError, match="read back"):
        export_ann_benchmarks(hashed, tmp_path / "y.hdf5", queries=1)
