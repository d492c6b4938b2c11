import numpy as np
import pytest

from hashindex import HashIndex, majority_vote
from hashindex.datasets import synthetic_codes


@pytest.mark.parametrize(
    "labels, expected",
    [
        ([1, 2, 2, 1, 3], 1),  # 1 and 2 tie with two votes; 1 is ranked first
        ([3, 2, 2, 1, 1], 2),  # 2 and 1 tie; 2's best member (rank 2) beats 1's (rank 4)
        ([4, 5, 5, 4, 5], 5),  # plain majority beats rank
        ([-1, -1, 4, 5, 5], 5),  # -1 casts no vote
        ([-1, -1, -1], -1),  # nothing to vote with
        ([7], 7),
    ],
)
def test_majority_vote_hand_cases(labels, expected):
    assert majority_vote(np.array([labels]))[0] == expected


def _reference_vote(row):
    counts = {}
    for label in row:
        if label >= 0:
            counts[label] = counts.get(label, 0) + 1
    if not counts:
        return -1
    best = max(counts.values())
    return next(label for label in row if counts.get(label) == best)


def test_majority_vote_matches_reference(rng):
    labels = rng.integers(-1, 4, size=(500, 8))
    np.testing.assert_array_equal(majority_vote(labels), [_reference_vote(r) for r in labels])


def test_vote_from_index_and_new_class_without_retraining():
    data = synthetic_codes(600, 60, 64, kind="clustered", n_clusters=4, flip_probability=0.05, seed=3)
    seen = data.database_labels < 3
    index = HashIndex(64)
    index.add(data.database[seen], labels=data.database_labels[seen])
    new_class_queries = data.queries[data.query_labels == 3]
    assert (index.vote(new_class_queries, k=8) != 3).all()  # unknown class cannot be predicted yet
    index.add(data.database[~seen], labels=data.database_labels[~seen])  # labelled codes of class 3
    assert (index.vote(new_class_queries, k=8) == 3).all()
    old = data.query_labels < 3
    assert (index.vote(data.queries[old], k=8) == data.query_labels[old]).mean() > 0.95


def test_vote_uses_reranked_neighbours_when_features_given(rng):
    codes = np.zeros((10, 8), np.uint8)  # identical codes: Hamming cannot tell them apart
    feats = np.arange(10, dtype=np.float32)[:, None]
    labels = np.array([0] * 5 + [1] * 5)
    index = HashIndex(64)
    index.add(codes, labels=labels, features=feats)
    assert index.vote(codes[:1], k=3, features=np.array([[9.0]]), candidates=10)[0] == 1
    assert index.vote(codes[:1], k=3, features=np.array([[0.0]]), candidates=10)[0] == 0
    # rerank=False turns the rerank off: the Hamming vote, whatever the features say.
    hamming = index.vote(codes[:1], k=3)
    assert index.vote(codes[:1], k=3, features=np.array([[9.0]]), candidates=10, rerank=False)[0] == hamming[0] == 0
