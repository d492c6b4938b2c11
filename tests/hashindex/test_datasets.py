"""The seeded synthetic codes that tests and benchmarks share."""

import numpy as np
import pytest

from hashindex.codes import hamming
from hashindex.datasets import synthetic_codes, tiled_codes


def test_perturbed_queries_are_near_their_source_and_not_in_the_database():
    data = synthetic_codes(5000, 400, 64, "clustered", n_clusters=500, queries="perturbed",
                           query_flip_probability=0.05, seed=2)
    sources = data.query_sources
    assert len(np.unique(sources)) == 400 and sources.min() >= 0 and sources.max() < 5000
    flipped = hamming(data.queries, data.database[sources])
    assert flipped.mean() == pytest.approx(64 * 0.05, rel=0.1)
    np.testing.assert_array_equal(data.query_labels, data.database_labels[sources])
    assert "flipped with p=0.05" in data.generator


def test_fresh_queries_come_from_the_same_centres_but_are_held_out():
    data = synthetic_codes(3000, 300, 64, "clustered", n_clusters=20, seed=3)
    assert (data.query_sources == -1).all()
    assert set(data.query_labels) <= set(data.database_labels)
    # Held-out codes lie as far from the database as database codes lie from each other.
    nearest = hamming(data.queries[:, None], data.database[None]).min(axis=1)
    assert nearest.mean() > 3


def test_same_seed_same_codes_and_modes_do_not_disturb_the_database():
    a = synthetic_codes(1000, 50, 64, "clustered", queries="perturbed", seed=9)
    b = synthetic_codes(1000, 50, 64, "clustered", queries="perturbed", seed=9)
    np.testing.assert_array_equal(a.queries, b.queries)
    fresh = synthetic_codes(1000, 50, 64, "clustered", seed=9)
    np.testing.assert_array_equal(a.database, fresh.database[:1000])


def test_unknown_query_mode_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown query mode 'near'.*fresh"):
        synthetic_codes(10, 2, 64, queries="near")


def test_tiled_codes_copy_the_base_with_per_copy_noise(rng):
    base = rng.integers(0, 256, (100, 8), dtype=np.uint8)
    labels = np.arange(100) % 7
    codes, tiled_labels = tiled_codes(base, labels, 1050, 0.1, seed=1)
    assert codes.shape == (1050, 8)
    np.testing.assert_array_equal(codes[:100], base)
    np.testing.assert_array_equal(tiled_labels, labels[np.arange(1050) % 100])
    noise = hamming(codes[100:], base[np.arange(100, 1050) % 100])
    assert noise.mean() == pytest.approx(6.4, rel=0.1)
    again, _ = tiled_codes(base, labels, 1050, 0.1, seed=1)
    np.testing.assert_array_equal(again, codes)
