"""The ``auto`` spec: parsing, the choice it makes, and the recall it promises."""

import numpy as np
import pytest

from hashindex import HashIndex, autotune, parse_spec
from hashindex.autotune import (MIN_IVF_CODES, build_auto, choose_nlist, self_excluded_recall, tune_nprobe)
from hashindex.bench import distance_recall
from hashindex.datasets import synthetic_codes
from hashindex.testing import assert_same_knn, brute_force_knn


@pytest.mark.parametrize("spec", ["auto", "auto,recall=0.9", "auto,k=100,recall=0.99",
                                  "auto,latency_ms=0.5,memory_mb=64,recall=1"])
def test_auto_spec_round_trips(spec):
    parsed = parse_spec(spec)
    assert parsed.kind == "auto"
    assert str(parsed) == spec
    assert parse_spec(str(parsed)) == parsed


def test_auto_spec_params_are_typed():
    assert parse_spec("AUTO,recall=0.9,k=10").params == {"recall": 0.9, "k": 10}


@pytest.mark.parametrize("bad", ["auto,recall=0", "auto,recall=1.5", "auto,recall=x", "auto,nprobe=3",
                                 "auto,k=2.5", "auto,latency_ms=-1", "auto,memory_mb=nan", "auto,recall"])
def test_bad_auto_params_name_the_grammar(bad):
    with pytest.raises(ValueError, match="recall=<0..1>"):
        parse_spec(bad)


def test_auto_spec_cannot_build_a_faiss_index_directly():
    with pytest.raises(ValueError, match="first add"):
        parse_spec("auto").build(64)


@pytest.mark.parametrize("n, nlist", [(1_000_000, 1024), (10_000_000, 4096), (100_000_000, 8192),
                                      (60_000, 256), (1000, 16)])
def test_choose_nlist_is_near_sqrt_n(n, nlist):
    assert choose_nlist(n) == nlist


def test_self_excluded_recall_by_hand():
    # Two queries (database rows 5 and 7), k = 2; exact k+1 distances: self (0) then 1, 3 / 0, 2, 2.
    exact_D = np.array([[0, 1, 3], [0, 2, 2]])
    D = np.array([[0, 1, 4], [2, 3, 9]])       # row 0: finds itself, then 1 (hit) and 4 (> 3, miss)
    I = np.array([[5, 11, 12], [20, 21, 22]])  # row 1: itself not found -> last slot dropped: 2 hit, 3 miss
    assert self_excluded_recall(D, I, np.array([5, 7]), exact_D, k=2) == pytest.approx(2 / 4)
    I_missing = np.array([[5, -1, 12], [20, 21, 22]])  # the distance-1 hit is now a missing slot
    assert self_excluded_recall(D, I_missing, np.array([5, 7]), exact_D, k=2) == pytest.approx(1 / 4)


def test_tune_nprobe_finds_the_smallest_nprobe_reaching_the_target(rng):
    import faiss

    codes = synthetic_codes(6000, 0, 64, "clustered", n_clusters=40, flip_probability=0.15, seed=3).database
    ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(64), 64, 64)
    ivf.train(codes[:64 * 40])
    ivf.add(codes)
    rows = np.arange(0, 6000, 30)
    exact_D = brute_force_knn(codes[rows], codes, 9)[0]
    nprobe, recall = tune_nprobe(ivf, codes[rows], rows, exact_D, 8, 0.9)
    assert recall >= 0.9

    def recall_at(p):
        ivf.nprobe = p
        return self_excluded_recall(*ivf.search(codes[rows], 9), rows, exact_D, 8)

    assert recall_at(nprobe) == pytest.approx(recall)
    if nprobe > 1:
        assert recall_at(nprobe - 1) < 0.9
    assert recall_at(64) == 1.0  # exhaustive


def test_small_database_resolves_to_exact_flat(rng):
    codes = synthetic_codes(2000, 20, 64, "clustered", seed=1)
    index = HashIndex(64, "auto,recall=0.9")
    index.add(codes.database)
    assert str(index.spec) == "flat"
    assert index.metadata["auto"]["chosen"] == "flat"
    assert str(MIN_IVF_CODES) in index.metadata["auto"]["reason"]
    assert_same_knn(*brute_force_knn(codes.queries, codes.database, 8), *index.search(codes.queries, k=8))


def test_exact_recall_request_resolves_to_flat():
    codes = synthetic_codes(MIN_IVF_CODES, 5, 64, "clustered", seed=2).database
    choice = build_auto(codes, 64, {"recall": 1.0})
    assert str(choice.spec) == "flat" and choice.report["reason"] == "exact recall requested"
    assert choice.index.ntotal == len(codes)


@pytest.fixture(scope="module")
def clustered():
    return synthetic_codes(12_000, 200, 64, "clustered", n_clusters=50, flip_probability=0.12, seed=7)


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """IVF builds on a busy 2-core machine stall at every OpenMP region with two threads."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(autouse=True)
def small_ivf_threshold(request, monkeypatch):
    """Let IVF be chosen from 10k codes so the tests stay small (the real threshold is 50k)."""
    if "clustered" in request.fixturenames:
        monkeypatch.setattr(autotune, "MIN_IVF_CODES", 10_000)


def test_ivf_choice_reaches_the_requested_recall_on_fresh_queries(clustered):
    choice = build_auto(clustered.database, 64, {"recall": 0.9}, compare_latency=False)
    assert choice.spec.kind == "IVF"
    assert choice.spec.args == (choose_nlist(len(clustered.database)),)
    assert choice.report["recall"] >= 0.9 + 0.005 - 1e-9
    assert choice.index.ntotal == len(clustered.database)
    D, I = choice.index.search(clustered.queries, 8)
    kth = brute_force_knn(clustered.queries, clustered.database, 8)[0][:, 7]
    # Tuned on database codes, checked on unseen queries from the same generator.
    assert distance_recall(clustered.queries, clustered.database, I, kth) >= 0.85


def test_memory_budget_too_small_for_ivf_falls_back_to_flat(clustered):
    n = len(clustered.database)
    budget_mb = n * 8 * 1.5 / 2**20  # holds the codes, not codes + int64 ids
    choice = build_auto(clustered.database, 64, {"recall": 0.9, "memory_mb": budget_mb}, compare_latency=False)
    assert str(choice.spec) == "flat" and "memory_mb" in choice.report["reason"]


def test_memory_budget_too_small_for_any_index_is_an_error(clustered):
    with pytest.raises(ValueError, match="memory_mb"):
        build_auto(clustered.database, 64, {"memory_mb": 0.01})


def test_generous_latency_budget_keeps_exact_flat(clustered):
    choice = build_auto(clustered.database, 64, {"recall": 0.9, "latency_ms": 1e6})
    assert str(choice.spec) == "flat" and "latency_ms" in choice.report["reason"]


def test_hashindex_auto_saves_the_resolved_spec(tmp_path, clustered):
    index = HashIndex(64, "auto,recall=0.9")
    index.add(clustered.database)
    assert index.spec.kind in ("flat", "IVF")  # which one depends on measured latency
    report = index.metadata["auto"]
    assert report["request"]["recall"] == 0.9 and report["recall"] >= 0.9
    index.add(clustered.queries[:10])  # later adds grow the chosen index
    assert len(index) == len(clustered.database) + 10
    index.save(tmp_path / "idx")
    loaded = HashIndex.load(tmp_path / "idx")
    assert str(loaded.spec) == str(index.spec)
    assert loaded.metadata["auto"]["chosen"] == report["chosen"]
    D, I = index.search(clustered.queries[10:40], k=8)
    D2, I2 = loaded.search(clustered.queries[10:40], k=8)
    np.testing.assert_array_equal(D2, D)
    np.testing.assert_array_equal(I2, I)


def test_empty_auto_index_saves_and_loads_as_a_request(tmp_path, rng):
    index = HashIndex(64, "auto,recall=0.9")
    index.save(tmp_path / "idx")
    loaded = HashIndex.load(tmp_path / "idx")
    assert str(loaded.spec) == "auto,recall=0.9"
    db = rng.integers(0, 256, (500, 8), dtype=np.uint8)
    loaded.add(db)
    assert str(loaded.spec) == "flat"
    assert_same_knn(*brute_force_knn(db[:5], db, 3), *loaded.search(db[:5], k=3))


def test_auto_on_padded_widths(rng):
    db = rng.integers(0, 256, (800, 6), dtype=np.uint8)
    index = HashIndex(48, "auto")
    index.add(db)
    assert index.faiss_bits == 64 and index.faiss_index.d == 64
    assert_same_knn(*brute_force_knn(db[:7], db, 5), *index.search(db[:7], k=5))
