"""Every metric against a case small enough to work out by hand."""

import numpy as np
import pytest

from hashindex import metrics
from hashindex.testing import hamming_matrix

# 8-bit codes: a database of five, two queries (worked out in the comments).
DB = np.array([[0b00000000], [0b00000001], [0b00000011], [0b00000001], [0b11111111]], dtype=np.uint8)
DB_LABELS = np.array([0, 1, 0, 0, 1])
Q = np.array([[0b00000000], [0b11111111]], dtype=np.uint8)
Q_LABELS = np.array([0, 1])
# Query 0: distances [0, 1, 2, 1, 8]; stable ranking 0, 1, 3, 2, 4 -> labels 0 1 0 0 1 -> relevant 1 0 1 1 0
#   AP@all = (1/1 + 2/3 + 3/4) / 3 = 29/36 ; AP@2 = 1
# Query 1: distances [8, 7, 6, 7, 0]; ranking 4, 2, 1, 3, 0 -> labels 1 0 1 0 0 -> relevant 1 0 1 0 0
#   AP@all = (1/1 + 2/3) / 2 = 5/6 ; AP@2 = 1


def test_average_precision_hand_cases():
    knn = np.array([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [2, 2, -1, 2, 0]])
    ap = metrics.average_precision_at_k(knn, np.array([1, 1, 2]))
    np.testing.assert_allclose(ap, [29 / 36, 0.0, (1 + 1 + 3 / 4) / 3])


def test_precision_at_k_hand_case():
    knn = np.array([[1, 0, 1, 1, 0], [-1, -1, 3, 3, 3]])
    np.testing.assert_allclose(metrics.precision_at_k(knn, np.array([1, 3])), [3 / 5, 3 / 5])


def test_vote_accuracy():
    assert metrics.vote_accuracy(np.array([1, 2, -1, 4]), np.array([1, 2, 3, 5])) == 0.5
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.vote_accuracy(np.array([1]), np.array([1, 2]))


def test_mean_average_precision_uses_stable_ranking():
    assert metrics.mean_average_precision(Q, Q_LABELS, DB, DB_LABELS, bits=8, k=None) == pytest.approx(
        (29 / 36 + 5 / 6) / 2)
    assert metrics.mean_average_precision(Q, Q_LABELS, DB, DB_LABELS, bits=8, k=2) == pytest.approx(1.0)
    # k=3: query 0 labels 0 1 0 -> (1 + 2/3)/2 ; query 1 labels 1 0 1 -> (1 + 2/3)/2
    assert metrics.mean_average_precision(Q, Q_LABELS, DB, DB_LABELS, bits=8, k=3) == pytest.approx(5 / 6)


def test_precision_recall_curve_hand_case():
    curve = metrics.precision_recall_curve(Q, Q_LABELS, DB, DB_LABELS, bits=8)
    # radius 0: q0 P=1 R=1/3, q1 P=1 R=1/2 ; radius 1: q0 P=2/3 R=2/3, q1 P=1 R=1/2
    # radius 2: q0 P=3/4 R=1, q1 P=1 R=1/2 ; radius 8: everything retrieved
    np.testing.assert_allclose(curve["precision"][:3], [1.0, 5 / 6, 7 / 8])
    np.testing.assert_allclose(curve["recall"][:3], [5 / 12, 7 / 12, 3 / 4])
    np.testing.assert_allclose(curve["precision"][8], (3 / 5 + 2 / 5) / 2)
    assert curve["recall"][8] == 1.0
    assert metrics.precision_within_radius(Q, Q_LABELS, DB, DB_LABELS, bits=8, radius=2) == pytest.approx(7 / 8)


def test_query_retrieving_nothing_counts_as_zero_precision():
    q = np.array([[0b11110000]], dtype=np.uint8)  # distance >= 3 from every database code
    assert metrics.precision_within_radius(q, np.array([0]), DB, DB_LABELS, bits=8, radius=2) == 0.0


def test_hamming_ranking_matches_stable_argsort(rng):
    db = rng.integers(0, 4, size=(700, 2), dtype=np.uint8)  # few patterns: ties everywhere
    q = rng.integers(0, 256, size=(33, 2), dtype=np.uint8)
    for k in (1, 10, 700, None):
        for batch, dist, pos in metrics.hamming_ranking(q, db, k, bits=16, batch_size=5):
            full = hamming_matrix(q[batch], db)
            ref = np.argsort(full, axis=1, kind="stable")[:, : (k or 700)]
            np.testing.assert_array_equal(pos, ref)
            np.testing.assert_array_equal(dist, np.take_along_axis(full, ref, axis=1))


def test_batching_does_not_change_results(rng):
    db = rng.integers(0, 256, size=(400, 4), dtype=np.uint8)
    q = rng.integers(0, 256, size=(50, 4), dtype=np.uint8)
    dl, ql = rng.integers(0, 5, 400), rng.integers(0, 5, 50)
    one = metrics.mean_average_precision(q, ql, db, dl, 32, k=100, batch_size=1)
    assert one == metrics.mean_average_precision(q, ql, db, dl, 32, k=100)
    a = metrics.precision_recall_curve(q, ql, db, dl, 32, batch_size=3)
    b = metrics.precision_recall_curve(q, ql, db, dl, 32)
    np.testing.assert_allclose(a["precision"], b["precision"])


def test_batches_bound_memory():
    # 1,000 queries x 1M database would be a 4 GB int32 matrix: batches keep each under the budget.
    batches = list(metrics._query_batches(1000, 1_000_000, None))
    assert len(batches) > 1
    assert max(b.stop - b.start for b in batches) * 1_000_000 <= metrics._CELL_BUDGET
