import numpy as np
import pytest

from hashindex import MISSING_DISTANCE, HashIndex
from hashindex.testing import assert_same_knn, brute_force_knn, hamming_matrix, tie_heavy_codes


@pytest.mark.parametrize("bits", [16, 32, 48, 64, 96, 128])
@pytest.mark.parametrize("kind", ["random", "ties"])
def test_flat_equals_brute_force(rng, bits, kind):
    if kind == "random":
        db = rng.integers(0, 256, size=(1500, bits // 8), dtype=np.uint8)
    else:
        db = tie_heavy_codes(rng, 1500, bits)
    q = np.concatenate([db[:10], rng.integers(0, 256, size=(30, bits // 8), dtype=np.uint8)])
    index = HashIndex(bits, "flat")
    index.add(db)
    for k in (1, 8, 100):
        D, I = index.search(q, k=k)
        D_ref, I_ref = brute_force_knn(q, db, k)
        assert_same_knn(D_ref, I_ref, D, I, database=db, queries=q)


def test_unpacked_queries_give_the_same_results(rng):
    bits = rng.integers(0, 2, size=(300, 64))
    index = HashIndex(64)
    index.add(bits.astype(bool))
    packed = np.packbits(bits.astype(bool), axis=1, bitorder="little")
    for form in (bits, 2 * bits - 1, bits.astype(bool), packed):
        D, I = index.search(form[:5], k=3)
        assert_same_knn(*brute_force_knn(packed[:5], packed, 3), D, I)


def test_custom_ids_are_returned(rng):
    db = rng.integers(0, 256, size=(200, 8), dtype=np.uint8)
    ids = np.arange(200) * 7 + 1000
    index = HashIndex(64)
    index.add(db[:100], ids=ids[:100])
    index.add(db[100:], ids=ids[100:])
    D, I = index.search(db[:20], k=4)
    D_ref, rows = brute_force_knn(db[:20], db, 4)
    assert_same_knn(D_ref, ids[rows], D, I)
    assert (I[:, 0] == ids[:20]).all() or (D[:, 0] == 0).all()


def test_default_ids_continue_after_existing(rng):
    index = HashIndex(64)
    index.add(rng.integers(0, 256, size=(3, 8), dtype=np.uint8), ids=[10, 11, 12])
    index.add(rng.integers(0, 256, size=(2, 8), dtype=np.uint8))
    np.testing.assert_array_equal(index.ids, [10, 11, 12, 13, 14])


def test_duplicate_ids_rejected_and_nothing_added(rng):
    index = HashIndex(64)
    index.add(rng.integers(0, 256, size=(3, 8), dtype=np.uint8), ids=[5, 6, 7])
    with pytest.raises(ValueError, match="duplicate ids"):
        index.add(rng.integers(0, 256, size=(2, 8), dtype=np.uint8), ids=[8, 6])
    assert len(index) == 3


def test_k_larger_than_index_pads(rng):
    db = rng.integers(0, 256, size=(5, 8), dtype=np.uint8)
    index = HashIndex(64)
    index.add(db)
    D, I = index.search(db[:2], k=9)
    assert (I[:, 5:] == -1).all() and (D[:, 5:] == MISSING_DISTANCE).all()
    assert sorted(I[0, :5].tolist()) == list(range(5))


@pytest.mark.parametrize("spec", ["flat", "HNSW8", "IVF2", "MultiHash2x8"])
def test_empty_index_returns_padding(spec):
    index = HashIndex(64, spec)
    D, I = index.search(np.zeros((2, 8), np.uint8), k=3)
    assert (I == -1).all() and (D == MISSING_DISTANCE).all()


def test_hnsw_padding_is_normalised(rng):
    index = HashIndex(64, "HNSW8")
    index.add(rng.integers(0, 256, size=(2, 8), dtype=np.uint8))
    D, I = index.search(np.zeros((1, 8), np.uint8), k=4)
    assert (I[0, 2:] == -1).all() and (D[0, 2:] == MISSING_DISTANCE).all()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda ix: ix.search(np.zeros((2, 4), np.uint8), k=8), "wrong code width 4"),
        (lambda ix: ix.search(np.zeros((2, 8), np.float64), k=8), "must be uint8"),
        (lambda ix: ix.search(np.zeros(8, np.uint8), k=8), "1-D"),
        (lambda ix: ix.search(np.zeros((2, 8), np.uint8), k=0), "k must be a positive integer"),
        (lambda ix: ix.search(np.zeros((2, 8), np.uint8), k=-3), "k must be a positive integer"),
        (lambda ix: ix.add(np.zeros((2, 8), np.uint8), labels=[1]), r"labels: expected shape \(2,\)"),
        (lambda ix: ix.add(np.zeros((2, 8), np.uint8), labels=[0.5, 1.0]), "expected integers"),
        (lambda ix: ix.range_search(np.zeros((1, 8), np.uint8), radius=-1), "radius"),
    ],
)
def test_bad_calls_raise_clear_errors(call, message):
    index = HashIndex(64)
    index.add(np.zeros((3, 8), np.uint8))
    with pytest.raises(ValueError, match=message):
        call(index)


def test_range_search_matches_brute_force(rng):
    db = tie_heavy_codes(rng, 800, 32)
    q = db[:15]
    for spec in ("flat", "IVF4,nprobe=4"):
        index = HashIndex(32, spec)
        index.add(db)
        lims, D, I = index.range_search(q, radius=6)
        dist = hamming_matrix(q, db)
        for row in range(len(q)):
            got = set(I[lims[row] : lims[row + 1]].tolist())
            assert got == set(np.flatnonzero(dist[row] <= 6).tolist())


def test_hnsw_has_no_range_search():
    index = HashIndex(64, "HNSW8")
    with pytest.raises(ValueError, match="no range search"):
        index.range_search(np.zeros((1, 8), np.uint8), 3)


def test_ivf_recall_never_drops_as_nprobe_grows(rng):
    from hashindex.datasets import synthetic_codes

    data = synthetic_codes(4000, 50, 64, kind="clustered", n_clusters=40, seed=1)
    index = HashIndex(64, "IVF32")
    index.add(data.database)
    D_ref, _ = brute_force_knn(data.queries, data.database, 8)
    previous = -1.0
    for nprobe in (1, 2, 4, 8, 16, 32):
        index.set_search_params(nprobe=nprobe)
        D, I = index.search(data.queries, k=8)
        recall = float(((D <= D_ref[:, -1:]) & (I >= 0)).mean())
        assert recall >= previous
        previous = recall
    assert previous == 1.0  # nprobe = nlist is exhaustive
    assert str(index.spec) == "IVF32,nprobe=32"


def test_ivf_needs_enough_training_codes():
    with pytest.raises(ValueError, match="needs at least 64 codes"):
        HashIndex(64, "IVF64").add(np.zeros((10, 8), np.uint8))


def test_save_load_round_trip(tmp_path, rng):
    db = rng.integers(0, 256, size=(300, 8), dtype=np.uint8)
    feats = rng.normal(size=(300, 6)).astype(np.float16)
    index = HashIndex(64, "IVF4,nprobe=2", class_names=["a", "b", "c"], metadata={"note": "x"})
    index.add(db, labels=rng.integers(0, 3, 300), features=feats, ids=np.arange(300) + 50)
    first = index.save(tmp_path / "ix")
    second = index.save(tmp_path / "ix")  # replaces the first version, kept for readers opening it now
    third = index.save(tmp_path / "ix")  # the first is removed now
    assert sorted((tmp_path / "ix").glob("v-*")) == sorted([second, third]) and not first.exists()
    loaded = HashIndex.load(tmp_path / "ix")
    for a, b in [(loaded.labels, index.labels), (loaded.ids, index.ids), (loaded.features, index.features)]:
        np.testing.assert_array_equal(a, b)
    assert loaded.class_names == ["a", "b", "c"] and loaded.metadata == {"note": "x"}
    for got, want in zip(loaded.search(db[:9], 5), index.search(db[:9], 5)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="holds 64-bit codes, expected 32-bit"):
        HashIndex.load(tmp_path / "ix", bits=32)


def test_features_must_be_consistent(rng):
    index = HashIndex(64)
    index.add(np.zeros((2, 8), np.uint8), features=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="pass features for every add"):
        index.add(np.zeros((2, 8), np.uint8))
    with pytest.raises(ValueError, match="expected dim 4"):
        index.add(np.zeros((2, 8), np.uint8), features=np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.zeros((1, 8), np.uint8), features=np.full((1, 4), np.nan))
    assert len(index) == 2
