"""HashIndex.remove and label-filtered search, checked against numpy brute force."""

import numpy as np
import pytest

from hashindex import MISSING_DISTANCE, HashIndex
from hashindex.testing import assert_same_knn, brute_force_knn, tie_heavy_codes

# Every kind whose codes can be read back; nprobe = nlist and a wide efSearch make IVF and
# HNSW exact on this data, so they can be held to brute force too.
READABLE_SPECS = ["flat", "IVF16,nprobe=16", "IVF16_HNSW4,nprobe=16", "HNSW8,efSearch=512"]


def _data(rng, n=2000, bits=64):
    db = np.concatenate([tie_heavy_codes(rng, n // 2, bits), rng.integers(0, 256, (n - n // 2, bits // 8), np.uint8)])
    labels = rng.integers(0, 6, n)
    queries = np.concatenate([db[:10], rng.integers(0, 256, (15, bits // 8), np.uint8)])
    return db, labels, queries


def _oracle(queries, db, rows, k, ids):
    """Brute-force kNN over ``db[rows]``, answered in the caller's ids."""
    D, sub = brute_force_knn(queries, db[rows], k)
    return D, np.where(sub >= 0, ids[rows][np.maximum(sub, 0)], -1)


@pytest.mark.parametrize("spec", READABLE_SPECS)
@pytest.mark.parametrize("wanted", [[1, 4], [5], ["c2", 0]])
def test_label_filter_equals_brute_force_restricted_to_the_labels(rng, spec, wanted):
    db, labels, queries = _data(rng)
    ids = np.arange(len(db)) * 3 + 7
    index = HashIndex(64, spec, class_names=[f"c{i}" for i in range(6)])
    index.add(db, labels=labels, ids=ids)
    as_ints = [int(w[1:]) if isinstance(w, str) else w for w in wanted]
    rows = np.flatnonzero(np.isin(labels, as_ints))
    for k in (1, 8, 50):
        D, I = index.search(queries, k=k, labels=wanted)
        assert_same_knn(*_oracle(queries, db, rows, k, ids), D, I)
        assert np.isin(index.labels_of(I[I >= 0]), as_ints).all()


def test_filter_with_fewer_allowed_codes_than_k_pads(rng):
    db, labels, queries = _data(rng, n=300)
    labels[:] = 0
    labels[[5, 50, 250]] = 3  # three codes of class 3, far apart
    for spec in ("flat", "IVF4,nprobe=1"):
        index = HashIndex(64, spec)
        index.add(db, labels=labels)
        D, I = index.search(queries, k=8, labels=[3])
        assert (np.sort(I[:, :3], axis=1) == [5, 50, 250]).all()  # found whatever list they sit in
        assert (I[:, 3:] == -1).all() and (D[:, 3:] == MISSING_DISTANCE).all()
        D, I = index.search(queries, k=4, labels=[9])  # no code has label 9
        assert (I == -1).all()


def test_filtered_vote_and_rerank(rng):
    db, labels, queries = _data(rng)
    features = rng.normal(size=(len(db), 16)).astype(np.float32)
    index = HashIndex(64, "flat")
    index.add(db, labels=labels, features=features)
    assert set(index.vote(queries, k=8, labels=[2, 3]).tolist()) <= {2, 3}
    q_features = features[:len(queries)]
    D, I = index.search_rerank(queries, q_features, k=5, candidates=40, labels=[2])
    rows = np.flatnonzero(labels == 2)
    pool = rows[brute_force_knn(queries, db[rows], 40)[1]]  # exact Hamming pool (ties as the oracle breaks them)
    for q in range(len(queries)):
        assert set(I[q]) <= set(rows.tolist())
        best = np.sort(np.linalg.norm(features[pool[q]] - q_features[q], axis=1))[:5]
        # Ties at the pool's boundary distance may swap members; distances of the top 5 rarely do.
        assert np.all(D[q] <= best + 1e-4) or np.isclose(D[q], best, atol=1e-4).mean() >= 0.6


def test_bad_labels_are_one_clear_error(rng):
    index = HashIndex(64, class_names=["cat", "dog"])
    index.add(rng.integers(0, 256, (10, 8), np.uint8), labels=np.zeros(10, int))
    with pytest.raises(ValueError, match="unknown class 'cow'"):
        index.search(index_codes := rng.integers(0, 256, (1, 8), np.uint8), k=2, labels=["cow"])
    with pytest.raises(ValueError, match="at least one label"):
        index.search(index_codes, k=2, labels=[])
    with pytest.raises(ValueError, match="ints or class names"):
        index.search(index_codes, k=2, labels=[1.5])


@pytest.mark.parametrize("spec", ["Hash16", "MultiHash2x16"])
def test_hash_tables_refuse_filter_and_remove_and_change_nothing(rng, spec):
    index = HashIndex(64, spec)
    db = rng.integers(0, 256, (100, 8), np.uint8)
    index.add(db, labels=np.arange(100) % 2)
    with pytest.raises(ValueError, match="read back"):
        index.search(db[:2], k=3, labels=[1])
    with pytest.raises(ValueError, match="read back"):
        index.remove([3])
    assert len(index) == 100 and index.search(db[3:4], k=1)[1][0, 0] == 3


@pytest.mark.parametrize("spec", READABLE_SPECS)
def test_remove_equals_an_index_built_without_the_removed_codes(rng, spec, tmp_path):
    db, labels, queries = _data(rng)
    features = rng.normal(size=(len(db), 8)).astype(np.float32)
    ids = np.arange(len(db)) * 2 + 1
    index = HashIndex(64, spec)
    index.add(db, labels=labels, features=features, ids=ids)
    gone = ids[rng.choice(len(db), 700, replace=False)]
    assert index.remove(np.concatenate([gone, [0, 10**9]])) == 700  # ids not stored are ignored
    assert index.remove(gone[:5]) == 0
    keep = np.flatnonzero(~np.isin(ids, gone))
    assert len(index) == len(keep) and np.array_equal(index.ids, ids[keep])
    assert np.array_equal(index.labels, labels[keep]) and np.array_equal(index.features, features[keep])
    for searched in (index, HashIndex.load(index.save(tmp_path / "ix").parent)):
        D, I = searched.search(queries, k=20)
        D_ref, I_ref = _oracle(queries, db, keep, 20, ids)
        if spec.startswith("HNSW"):  # approximate on tie-heavy codes: removed ids never come back
            assert not np.isin(I, gone).any() and np.mean(D == D_ref) >= 0.9
        else:
            assert_same_knn(D_ref, I_ref, D, I)
        assert np.array_equal(searched.labels_of(I[I >= 0]), labels[(I[I >= 0] - 1) // 2])
    # Adding after a removal: new ids continue after the largest, new rows are found.
    new = rng.integers(0, 256, (30, 8), np.uint8)
    index.add(new, labels=np.full(30, 5), features=rng.normal(size=(30, 8)).astype(np.float32))
    assert index.ids[-1] == ids[-1] + 30
    D, I = index.search(new, k=1)
    assert (D[:, 0] == 0).all() and (index.labels_of(I[:, 0]) == 5).all()


def test_remove_everything_then_search_pads(rng):
    index = HashIndex(64, "IVF4,nprobe=4")
    db = rng.integers(0, 256, (200, 8), np.uint8)
    index.add(db)
    assert index.remove(index.ids.copy()) == 200 and len(index) == 0
    D, I = index.search(db[:2], k=3)
    assert (I == -1).all()


def test_routed_engine_forgets_removed_codes(rng):
    """An engine that holds its own copy of the codes (torch) is refitted after a removal."""
    pytest.importorskip("hashtorch")  # importing it registers the engine
    db, labels, queries = _data(rng, n=600)
    index = HashIndex(64, engine="torch")
    index.add(db, labels=labels)
    index.search(queries, k=5)  # the engine now holds all 600 codes
    gone = np.arange(0, 600, 3)
    index.remove(gone)
    index.add(db[gone[:50]], labels=labels[gone[:50]])  # ntotal alone no longer reveals the edit
    keep = np.concatenate([np.setdiff1d(np.arange(600), gone), gone[:50]])
    D, I = index.search(queries, k=5)
    D_ref, sub = brute_force_knn(queries, db[keep], 5)
    assert_same_knn(D_ref, np.where(sub >= 0, index.ids[np.maximum(sub, 0)], -1), D, I)
