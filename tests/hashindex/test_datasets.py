"""The seeded synthetic codes that tests and benchmarks share."""

import numpy as np
import pytest

from hashindex.codes import hamming
from hashindex.datasets import benchmark_codes, synthetic_codes, tiled_codes


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


@pytest.mark.parametrize("name, centres, mode", [("clustered", 100, "fresh"), ("clustered2500", 2500, "fresh"),
                                                 ("clustered300-perturbed", 300, "perturbed")])
def test_benchmark_data_kinds_name_the_generator(name, centres, mode):
    data = benchmark_codes(name, 2000, 30, 64, seed=4)
    expected = synthetic_codes(2000, 30, 64, "clustered", n_clusters=centres, queries=mode, seed=4)
    np.testing.assert_array_equal(data.database, expected.database)
    np.testing.assert_array_equal(data.queries, expected.queries)


def test_encoder_data_kind_tiles_the_codes_file_and_holds_its_queries_out(tmp_path, rng):
    base = rng.integers(0, 256, (50, 8), dtype=np.uint8)
    held_out = rng.integers(0, 256, (20, 8), dtype=np.uint8)
    path = tmp_path / "codes.npz"
    np.savez(path, base=base, base_labels=np.arange(50) % 10, queries=held_out, query_labels=np.arange(20) % 10)
    data = benchmark_codes("encoder", 500, 10, 64, encoder_codes=path)
    np.testing.assert_array_equal(data.database[:50], base)
    assert {bytes(q) for q in data.queries} <= {bytes(q) for q in held_out}
    assert not {bytes(q) for q in data.queries} & {bytes(c) for c in data.database}
    perturbed = benchmark_codes("encoder-perturbed", 500, 10, 64, encoder_codes=path)
    assert (perturbed.query_sources >= 0).all()
    with pytest.raises(ValueError, match="32-bit codes, 64 asked for"):
        np.savez(path, base=base[:, :4], base_labels=np.zeros(50), queries=held_out[:, :4], query_labels=np.zeros(20))
        benchmark_codes("encoder", 500, 10, 64, encoder_codes=path)


@pytest.mark.parametrize("bad", ["clusters", "encoder-noisy", "uniform10"])
def test_unknown_data_kind_lists_the_valid_ones(bad):
    with pytest.raises(ValueError, match="expected uniform, clustered"):
        benchmark_codes(bad, 10, 2, 64)
