import numpy as np
import pytest

from hashindex import HashIndex, rerank_euclidean
from hashindex.datasets import synthetic_codes
from hashindex.testing import hamming_matrix


def _brute_force_rerank(qf, db_feats, pool_ids, k):
    """Reference: exact float64 distances over the pool, stable sort."""
    D = np.full((len(qf), k), np.inf)
    I = np.full((len(qf), k), -1)
    for row, pool in enumerate(pool_ids):
        pool = pool[pool >= 0]
        dist = np.sqrt(((db_feats[pool].astype(np.float64) - qf[row]) ** 2).sum(1))
        order = np.argsort(dist, kind="stable")[:k]
        D[row, : len(order)] = dist[order]
        I[row, : len(order)] = pool[order]
    return D, I


@pytest.fixture
def indexed(rng):
    data = synthetic_codes(3000, 40, 64, kind="clustered", n_clusters=20, seed=5)
    feats = rng.normal(size=(3000, 16)).astype(np.float32)
    qf = rng.normal(size=(40, 16)).astype(np.float32)
    index = HashIndex(64)
    index.add(data.database, labels=data.database_labels, features=feats)
    return index, data, feats, qf


@pytest.mark.parametrize("candidates", [5, 50, 1000])
def test_rerank_equals_brute_force_rerank_of_the_same_pool(indexed, candidates):
    index, data, feats, qf = indexed
    _, pool = index.search(data.queries, k=candidates)
    D, I = index.search_rerank(data.queries, qf, k=8, candidates=candidates)
    D_ref, I_ref = _brute_force_rerank(qf, feats, pool, 8)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, rtol=1e-5)
    assert D.dtype == np.float32 and I.dtype == np.int64


def test_small_pool_pads(indexed):
    index, data, feats, qf = indexed
    D, I = index.search_rerank(data.queries, qf, k=8, candidates=3)
    assert (I[:, 3:] == -1).all() and np.isinf(D[:, 3:]).all()


def test_radius_pool_equals_brute_force(indexed):
    index, data, feats, qf = indexed
    D, I = index.search_rerank(data.queries, qf, k=8, radius=20)
    within = hamming_matrix(data.queries, data.database) <= 20
    pools = [np.flatnonzero(row) for row in within]
    width = max(len(p) for p in pools)
    pool = np.full((len(pools), width), -1)
    for r, p in enumerate(pools):
        pool[r, : len(p)] = p
    D_ref, I_ref = _brute_force_rerank(qf, feats, pool, 8)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, rtol=1e-5)


def test_recall_never_drops_as_candidates_grow(indexed):
    index, data, feats, qf = indexed
    exact = _brute_force_rerank(qf, feats, np.tile(np.arange(len(feats)), (len(qf), 1)), 8)[1]
    previous = -1.0
    for candidates in (8, 64, 512, 3000):
        _, I = index.search_rerank(data.queries, qf, k=8, candidates=candidates)
        recall = np.mean([len(set(a) & set(b)) / 8 for a, b in zip(I, exact)])
        assert recall >= previous
        previous = recall
    assert previous == 1.0  # a pool of the whole database is an exact Euclidean search


def test_rerank_errors(indexed, rng):
    index, data, feats, qf = indexed
    with pytest.raises(ValueError, match=r"query features: expected shape \(40, 16\)"):
        index.search_rerank(data.queries, qf[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        index.search_rerank(data.queries, np.full_like(qf, np.nan))
    with pytest.raises(ValueError, match="candidates must be a positive integer"):
        index.search_rerank(data.queries, qf, candidates=0)
    bare = HashIndex(64)
    bare.add(data.database)
    with pytest.raises(ValueError, match="holds no features"):
        bare.search_rerank(data.queries, qf)


def test_rerank_euclidean_batches_agree(rng, monkeypatch):
    import hashindex.rerank as rr

    db = rng.normal(size=(200, 4)).astype(np.float16)
    q = rng.normal(size=(30, 4)).astype(np.float32)
    pool = rng.integers(-1, 200, size=(30, 25))
    full = rerank_euclidean(q, db, pool, 5)
    monkeypatch.setattr(rr, "_GATHER_BUDGET", 100)  # force many small batches
    small = rr.rerank_euclidean(q, db, pool, 5)
    np.testing.assert_array_equal(full[1], small[1])
    np.testing.assert_array_equal(full[0], small[0])
