"""Property-based tests (hypothesis): search, range search, rerank, vote and metrics against
plain numpy oracles, over random sizes, code widths 8..128, k, and tie-heavy codes."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hashindex import MISSING_DISTANCE, HashIndex, majority_vote
from hashindex.metrics import (average_precision_at_k, hamming_ranking, mean_average_precision,
                               precision_at_k, precision_recall_curve)
from hashindex.testing import assert_same_knn, brute_force_knn, hamming_matrix

PROPS = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def code_sets(draw, max_db=200):
    """(database, queries, bits): uniform codes, or codes drawn from a few patterns (massive
    distance ties), or codes differing in a few low bits only (small distances, many ties)."""
    bits = draw(st.integers(1, 16)) * 8
    n_db = draw(st.integers(0, max_db))
    n_q = draw(st.integers(1, 12))
    kind = draw(st.sampled_from(["uniform", "patterns", "few_bits"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    nbytes = bits // 8

    def make(n):
        if kind == "uniform":
            return rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
        if kind == "patterns":
            patterns = rng.integers(0, 256, size=(3, nbytes), dtype=np.uint8)
            return patterns[rng.integers(0, 3, size=n)]
        codes = np.zeros((n, nbytes), dtype=np.uint8)
        codes[:, 0] = rng.integers(0, 4, size=n)
        return codes

    database = make(n_db)
    queries = np.concatenate([database[: n_q // 2], make(n_q - min(n_q // 2, n_db))])
    return database, queries, bits


# --------------------------------------------------------------------------- search


@PROPS
@given(data=code_sets(), k=st.integers(1, 220))
def test_flat_search_is_the_exact_knn(data, k):
    database, queries, bits = data
    index = HashIndex(bits, "flat")
    index.add(database)
    D, I = index.search(queries, k=k)
    D_ref, I_ref = brute_force_knn(queries, database, k)
    assert_same_knn(D_ref, I_ref, D, I, database=database, queries=queries)
    if k > len(database):
        assert (I[:, len(database):] == -1).all() and (D[:, len(database):] == MISSING_DISTANCE).all()


@PROPS
@given(data=code_sets(), k=st.integers(1, 50), nlist=st.integers(1, 4))
def test_exhaustive_ivf_is_the_exact_knn(data, k, nlist):
    database, queries, bits = data
    assume(len(database) >= nlist)
    index = HashIndex(bits, f"IVF{nlist},nprobe={nlist}")
    index.add(database)
    assert_same_knn(*brute_force_knn(queries, database, k), *index.search(queries, k=k),
                    database=database, queries=queries)


@PROPS
@given(data=code_sets(), radius=st.integers(0, 12), offset=st.integers(0, 1000))
def test_range_search_returns_exactly_the_codes_within_radius(data, radius, offset):
    database, queries, bits = data
    index = HashIndex(bits)
    ids = np.arange(len(database)) * 3 + offset  # custom ids are mapped back
    index.add(database, ids=ids)
    lims, D, I = index.range_search(queries, radius)
    dist = hamming_matrix(queries, database)
    for row in range(len(queries)):
        got = dict(zip(I[lims[row]:lims[row + 1]].tolist(), D[lims[row]:lims[row + 1]].tolist()))
        want = {int(ids[j]): int(dist[row, j]) for j in np.flatnonzero(dist[row] <= radius)}
        assert got == want


# --------------------------------------------------------------------------- rerank


def _naive_rerank(query_features, database_features, pool_rows, k):
    """Per query: Euclidean distance to each pooled row, stable sort (pool order breaks ties)."""
    D = np.full((len(pool_rows), k), np.inf, dtype=np.float32)
    I = np.full((len(pool_rows), k), -1, dtype=np.int64)
    for q, rows in enumerate(pool_rows):
        dist = [float(np.sqrt(np.sum((database_features[r].astype(np.float64) - query_features[q]) ** 2)))
                for r in rows]
        order = sorted(range(len(rows)), key=lambda i: dist[i])[:k]
        D[q, : len(order)] = [dist[i] for i in order]
        I[q, : len(order)] = [rows[i] for i in order]
    return D, I


def _features(rng, n, d):
    return rng.integers(-2, 3, size=(n, d)).astype(np.float32)  # small integers: many exact ties


@PROPS
@given(data=code_sets(), k=st.integers(1, 30), candidates=st.integers(1, 250), d=st.integers(1, 6),
       seed=st.integers(0, 1000))
def test_rerank_equals_a_naive_rerank_of_the_same_pool(data, k, candidates, d, seed):
    database, queries, bits = data
    rng = np.random.default_rng(seed)
    feats, qfeats = _features(rng, len(database), d), _features(rng, len(queries), d)
    index = HashIndex(bits)
    index.add(database, features=feats)
    D_pool, pool = index.search(queries, k=candidates)
    assert_same_knn(*brute_force_knn(queries, database, candidates), D_pool, pool)  # the pool is the exact kNN
    D, I = index.search_rerank(queries, qfeats, k=k, candidates=candidates)
    D_ref, I_ref = _naive_rerank(qfeats, feats, [row[row >= 0].tolist() for row in pool], k)
    np.testing.assert_array_equal(D, D_ref)
    np.testing.assert_array_equal(I, I_ref)


@PROPS
@given(data=code_sets(), k=st.integers(1, 30), radius=st.integers(0, 10), d=st.integers(1, 6),
       seed=st.integers(0, 1000))
def test_radius_rerank_equals_a_brute_force_one(data, k, radius, d, seed):
    """With a radius pool everything is determined by the data: pool = codes within the radius
    in (Hamming distance, row) order, then a stable Euclidean sort."""
    database, queries, bits = data
    rng = np.random.default_rng(seed)
    feats, qfeats = _features(rng, len(database), d), _features(rng, len(queries), d)
    index = HashIndex(bits)
    index.add(database, features=feats)
    dist = hamming_matrix(queries, database)
    pools = [sorted(np.flatnonzero(row <= radius).tolist(), key=lambda j, row=row: (row[j], j)) for row in dist]
    D, I = index.search_rerank(queries, qfeats, k=k, radius=radius)
    D_ref, I_ref = _naive_rerank(qfeats, feats, pools, k)
    np.testing.assert_array_equal(D, D_ref)
    np.testing.assert_array_equal(I, I_ref)


# --------------------------------------------------------------------------- vote


def _naive_vote(row) -> int:
    """Most frequent label >= 0; a tie goes to the tied label seen first; -1 if none."""
    valid = [int(x) for x in row if x >= 0]
    if not valid:
        return -1
    best = max(valid.count(x) for x in valid)
    return next(x for x in valid if valid.count(x) == best)


@PROPS
@given(labels=st.lists(st.lists(st.integers(-1, 3), min_size=0, max_size=12), min_size=1, max_size=10)
       .filter(lambda rows: len({len(r) for r in rows}) == 1))
def test_majority_vote_equals_a_naive_vote(labels):
    got = majority_vote(np.array(labels, dtype=np.int64).reshape(len(labels), -1))
    assert got.tolist() == [_naive_vote(row) for row in labels]


@PROPS
@given(data=code_sets(), k=st.integers(1, 20), seed=st.integers(0, 1000))
def test_index_vote_is_the_vote_of_its_search(data, k, seed):
    database, queries, bits = data
    labels = np.random.default_rng(seed).integers(-1, 3, size=len(database))
    index = HashIndex(bits)
    index.add(database, labels=labels)
    _, I = index.search(queries, k=k)
    neighbour_labels = np.where(I >= 0, labels[np.maximum(I, 0)] if len(labels) else -1, -1)
    assert index.vote(queries, k=k).tolist() == [_naive_vote(row) for row in neighbour_labels]


# --------------------------------------------------------------------------- metrics


def _naive_ranking(query, database):
    dist = hamming_matrix(query[None], database)[0]
    return sorted(range(len(database)), key=lambda j: (dist[j], j)), dist


def _naive_ap(ranked_labels, query_label) -> float:
    hits, total = 0, 0.0
    for i, label in enumerate(ranked_labels, 1):
        if label >= 0 and label == query_label:
            hits += 1
            total += hits / i
    return total / hits if hits else 0.0


@st.composite
def labelled(draw):
    database, queries, bits = draw(code_sets(max_db=120))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    classes = draw(st.integers(1, 4))
    return (database, rng.integers(-1, classes, size=len(database)), queries,
            rng.integers(-1, classes, size=len(queries)), bits)


@PROPS
@given(data=labelled(), k=st.one_of(st.none(), st.integers(1, 150)), batch=st.integers(1, 7))
def test_map_equals_a_naive_per_query_map_whatever_the_batch_size(data, k, batch):
    database, db_labels, queries, q_labels, bits = data
    naive = []
    for q, label in zip(queries, q_labels):
        order, _ = _naive_ranking(q, database)
        naive.append(_naive_ap(db_labels[order[:k]], label))
    want = float(np.mean(naive))
    for batch_size in (None, batch, 1):
        got = mean_average_precision(queries, q_labels, database, db_labels, bits, k=k, batch_size=batch_size)
        assert abs(got - want) < 1e-12


@PROPS
@given(data=labelled(), k=st.integers(1, 150), batch=st.integers(1, 7))
def test_hamming_ranking_is_the_stable_ranking_in_every_batch(data, k, batch):
    database, _, queries, _, bits = data
    for rows, dist, positions in hamming_ranking(queries, database, k, bits, batch_size=batch):
        for q, row in enumerate(range(rows.start, rows.stop)):
            order, d = _naive_ranking(queries[row], database)
            assert positions[q].tolist() == order[:k] and dist[q].tolist() == d[order[:k]].tolist()


@PROPS
@given(data=labelled(), k=st.integers(1, 12))
def test_precision_and_ap_at_k_on_knn_labels(data, k):
    database, db_labels, queries, q_labels, bits = data
    index = HashIndex(bits)
    index.add(database, labels=db_labels)
    knn = index.labels_of(index.search(queries, k=k)[1])
    want_p = [sum(1 for x in row if x >= 0 and x == q) / k for row, q in zip(knn, q_labels)]
    np.testing.assert_allclose(precision_at_k(knn, q_labels), want_p)
    np.testing.assert_allclose(average_precision_at_k(knn, q_labels), [_naive_ap(r, q) for r, q in zip(knn, q_labels)])


@PROPS
@given(data=labelled(), batch=st.integers(1, 7))
def test_precision_recall_curve_equals_naive_counts(data, batch):
    database, db_labels, queries, q_labels, bits = data
    curve = precision_recall_curve(queries, q_labels, database, db_labels, bits, batch_size=batch)
    dist = hamming_matrix(queries, database)
    relevant = (db_labels[None, :] == q_labels[:, None]) & (db_labels[None, :] >= 0)
    for r in range(bits + 1):
        within = dist <= r
        hits, found, n_rel = (within & relevant).sum(1), within.sum(1), relevant.sum(1)
        precision = np.where(found > 0, hits / np.maximum(found, 1), 0.0).mean()
        recall = np.where(n_rel > 0, hits / np.maximum(n_rel, 1), 0.0).mean()
        assert abs(curve["precision"][r] - precision) < 1e-12 and abs(curve["recall"][r] - recall) < 1e-12
