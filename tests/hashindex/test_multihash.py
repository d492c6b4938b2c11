"""Is MultiHash exact? Faiss's IndexBinaryMultiHash probes, in each of its ``nhash`` tables,
the buckets within ``nflip`` bits of the query's sub-code and ranks what it finds. By the
pigeonhole principle every code within ``nhash * (nflip + 1) - 1`` bits shares some table's
sub-code up to ``nflip`` bits, so it is always found; farther neighbours may be missed, so
its kNN is exact only when the true k-th distance is within that radius."""

import numpy as np
import pytest

from hashindex import HashIndex
from hashindex.datasets import synthetic_codes
from hashindex.testing import brute_force_knn


@pytest.mark.parametrize("nflip", [0, 1, 2])
def test_multihash_finds_every_neighbour_within_the_pigeonhole_radius(nflip):
    data = synthetic_codes(20_000, 100, 64, "clustered", n_clusters=200, queries="perturbed", seed=nflip)
    index = HashIndex(64, f"MultiHash4x16,nflip={nflip}")
    index.add(data.database)
    radius = 4 * (nflip + 1) - 1
    k = 50
    D, I = index.search(data.queries, k)
    true_D, _ = brute_force_knn(data.queries, data.database, k)
    within = true_D <= radius
    # Every true neighbour within the radius is returned, at its true distance.
    np.testing.assert_array_equal(np.where(within, D, -1), np.where(within, true_D, -1))


def test_multihash_knn_is_not_exact_beyond_the_radius():
    data = synthetic_codes(20_000, 100, 64, "uniform", seed=3)
    index = HashIndex(64, "MultiHash4x16,nflip=1")
    index.add(data.database)
    D, _ = index.search(data.queries, 8)
    true_D, _ = brute_force_knn(data.queries, data.database, 8)
    assert (true_D[:, 7] > 7).all()  # the 8th neighbour lies beyond 4 * 2 - 1 bits
    missed = (D[:, 7] > true_D[:, 7]) | (D[:, 7] < 0)
    assert missed.mean() > 0.5
