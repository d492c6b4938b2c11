"""The ``auto`` spec: parsing, the choice it makes, and the recall it promises."""

import numpy as np
import pytest

from hashindex import HashIndex, autotune, parse_spec
from hashindex.autotune import (Calibration, build_auto, choose_nlist, drop_sources,
                                tune_search_param)
from hashindex.codes import hamming
from hashindex.bench import distance_recall
from hashindex.datasets import synthetic_codes
from hashindex.testing import assert_same_knn, brute_force_knn


@pytest.mark.parametrize("spec", ["auto", "auto,recall=0.9", "auto,k=100,recall=0.99",
                                  "auto,latency_ms=0.5,memory_mb=64,recall=1", "auto,noise=0", "auto,noise=0.1,recall=0.9"])
def test_auto_spec_round_trips(spec):
    parsed = parse_spec(spec)
    assert parsed.kind == "auto"
    assert str(parsed) == spec
    assert parse_spec(str(parsed)) == parsed


def test_auto_spec_params_are_typed():
    assert parse_spec("AUTO,recall=0.9,k=10").params == {"recall": 0.9, "k": 10}


@pytest.mark.parametrize("bad", ["auto,recall=0", "auto,recall=1.5", "auto,recall=x", "auto,nprobe=3",
                                 "auto,k=2.5", "auto,latency_ms=-1", "auto,memory_mb=nan", "auto,recall",
                                 "auto,noise=0.6", "auto,noise=-0.1"])
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


@pytest.mark.parametrize("n, sampled, hnsw", [(1_000_000, "IVF8192_HNSW32_sampled", False),
                                               (12_000, "IVF64_HNSW32_sampled", True)])
def test_candidates_cover_every_kind_within_their_size_limits(n, sampled, hnsw):
    specs = [str(s) for s in autotune.candidate_specs(n, 64)]
    assert specs[:3] == [f"IVF{choose_nlist(n)}", sampled, "MultiHash4x16"]
    assert ("HNSW32" in specs) == hnsw


def test_above_the_build_limit_only_the_sampled_ivf_is_built():
    assert [str(s) for s in autotune.candidate_specs(autotune.SAMPLED_ONLY_ABOVE, 64)][:3] == [
        "IVF1024", "IVF16384_HNSW32_sampled", "MultiHash4x16"]
    assert [str(s) for s in autotune.candidate_specs(10_000_000, 64)] == ["IVF65536_HNSW32_sampled"]


def test_drop_sources_by_hand():
    # Two queries made from database rows 5 and 7, k = 2, results of k + 1 = 3.
    D = np.array([[1, 2, 4], [2, 3, 9]])
    I = np.array([[11, 5, 12], [20, 21, 22]])  # row 0 returned its source (5): dropped; row 1 did not:
    kept_D, kept_I = drop_sources(D, I, np.array([5, 7]), k=2)  # its last slot is dropped
    np.testing.assert_array_equal(kept_I, [[11, 12], [20, 21]])
    np.testing.assert_array_equal(kept_D, [[1, 4], [2, 3]])


def test_calibration_recall_by_hand():
    cal = Calibration(queries=np.zeros((2, 8), np.uint8), sources=np.array([5, 7]), exact_kth=np.array([3, 2]),
                      k=2, noise=0.0)
    D = np.array([[0, 1, 4], [2, 3, 9]])
    I = np.array([[5, 11, 12], [20, 21, 22]])  # kept: (1 hit, 4 miss), (2 hit, 3 miss)
    assert cal.recall(lambda q, k: (D, I)) == pytest.approx(2 / 4)
    I_missing = np.array([[5, -1, 12], [20, 21, 22]])  # the distance-1 hit is now a missing slot
    assert cal.recall(lambda q, k: (D, I_missing)) == pytest.approx(1 / 4)


def test_calibration_queries_are_not_in_the_index():
    import faiss

    codes = synthetic_codes(3000, 0, 64, "clustered", n_clusters=30, seed=4).database
    flat = faiss.IndexBinaryFlat(64)
    flat.add(codes)
    cal = Calibration.draw(codes, flat, 8, 0.05, np.random.default_rng(0))
    exact_without_source = [np.sort(hamming(np.delete(codes, s, axis=0), q))[7]
                            for q, s in zip(cal.queries, cal.sources)]
    np.testing.assert_array_equal(cal.exact_kth, exact_without_source)
    assert hamming(cal.queries, codes[cal.sources]).mean() == pytest.approx(64 * 0.05, rel=0.15)
    assert cal.recall(flat.search) == 1.0


def test_tune_search_param_finds_the_smallest_value_reaching_the_target():
    import faiss

    codes = synthetic_codes(6000, 0, 64, "clustered", n_clusters=40, flip_probability=0.15, seed=3).database
    ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(64), 64, 64)
    ivf.train(codes[:64 * 40])
    ivf.add(codes)
    flat = faiss.IndexBinaryFlat(64)
    flat.add(codes)
    cal = Calibration.draw(codes, flat, 8, 0.05, np.random.default_rng(1))
    name, nprobe, recall = tune_search_param(ivf, "IVF", cal.recall, 0.9)
    assert name == "nprobe" and recall >= 0.9 and ivf.nprobe == nprobe

    def recall_at(p):
        ivf.nprobe = p
        return cal.recall(ivf.search)

    assert recall_at(nprobe) == pytest.approx(recall)
    if nprobe > 1:
        assert recall_at(nprobe - 1) < 0.9
    assert recall_at(64) == 1.0  # exhaustive


def test_tuning_times_every_setting_reaching_the_target_in_alternation_and_keeps_the_fastest(monkeypatch):
    import faiss
    from types import SimpleNamespace

    codes = synthetic_codes(12_000, 0, 64, "clustered", n_clusters=120, seed=8).database
    spec = parse_spec("IVF64_HNSW8_sampled")
    index = autotune._build(spec, codes, 64, np.random.default_rng(0))
    flat = faiss.IndexBinaryFlat(64)
    flat.add(codes)
    cal = Calibration.draw(codes, flat, 8, 0.05, np.random.default_rng(2))
    timed = {}

    def fake_time_single(fns, queries, k, budget_s, max_samples):
        # each call sets its own parameters; the later a setting, the "faster" it is made to look
        assert faiss.omp_get_max_threads() == 1  # single queries are timed on one thread
        for name, fn in fns.items():
            fn(queries[:1], k)
            timed[name] = (index.nprobe, faiss.downcast_IndexBinary(index.quantizer).hnsw.efSearch)
        return {name: SimpleNamespace(median_ms=1.0 / (1 + int(name))) for name in fns}

    monkeypatch.setattr(autotune, "time_single", fake_time_single)
    faiss.omp_set_num_threads(2)
    try:
        params, recall, latency = autotune._tune(index, spec.kind, cal, 0.9)
        assert faiss.omp_get_max_threads() == 2  # and the caller's threads are given back
    finally:
        faiss.omp_set_num_threads(1)
    reaching = list(timed.values())
    assert len(reaching) == len(set(reaching)) >= 2  # several settings, each timed with its own parameters
    for nprobe, depth in reaching:  # only settings whose calibrated recall reaches the target were timed
        autotune.apply_search_params(index, spec.kind, {"nprobe": nprobe, "quantizer_efSearch": depth})
        assert cal.recall(index.search) >= 0.9
    assert (params["nprobe"], params["quantizer_efSearch"]) == reaching[-1] and latency == 1.0 / len(reaching)
    assert (index.nprobe, faiss.downcast_IndexBinary(index.quantizer).hnsw.efSearch) == reaching[-1]  # applied
    assert recall == pytest.approx(cal.recall(index.search))


def test_small_database_resolves_to_exact_flat(rng):
    codes = synthetic_codes(2000, 20, 64, "clustered", seed=1)
    index = HashIndex(64, "auto,recall=0.9")
    index.add(codes.database)
    assert str(index.spec) == "flat"
    assert index.metadata["auto"]["chosen"] == "flat"
    assert str(autotune.MIN_IVF_CODES) in index.metadata["auto"]["reason"]
    assert_same_knn(*brute_force_knn(codes.queries, codes.database, 8), *index.search(codes.queries, k=8))


def test_exact_recall_request_resolves_to_flat():
    codes = synthetic_codes(autotune.MIN_IVF_CODES, 5, 64, "clustered", seed=2).database
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
def small_ivf_threshold(monkeypatch):
    """Let IVF be chosen from 10k codes so the tests stay small (the real threshold is 50k)."""
    monkeypatch.setattr(autotune, "MIN_IVF_CODES", 10_000)


@pytest.mark.parametrize("n_clusters, seed", [(60, 11), (400, 12)])
@pytest.mark.parametrize("queries", ["fresh", "perturbed"])
@pytest.mark.parametrize("recall", [0.9, 0.95])
def test_auto_keeps_its_recall_on_queries_not_in_the_index(n_clusters, seed, queries, recall):
    """The promise: what auto records is what a user gets on queries from outside the index
    (held-out codes, or stored codes with 5 % of bits flipped), on splits auto never saw."""
    data = synthetic_codes(12_000, 600, 64, "clustered", n_clusters=n_clusters, queries=queries, seed=seed)
    choice = build_auto(data.database, 64, {"recall": recall}, compare_latency=False)
    assert choice.spec.kind in ("IVF", "IVF_HNSW_sampled", "MultiHash", "HNSW")
    assert choice.report["recall"] >= recall and choice.report["request_met"]
    assert "not in the index" in choice.report["calibration"]
    assert {c["spec"] for c in choice.report["candidates"]} == {"IVF128", "IVF64_HNSW32_sampled", "MultiHash4x16",
                                                                 "HNSW32"}
    assert all(c["build_s"] > 0 and c["memory_bytes"] > len(data.database) * 8 for c in choice.report["candidates"])
    _, I = choice.index.search(data.queries, 8)
    kth = brute_force_knn(data.queries, data.database, 8)[0][:, 7]
    assert distance_recall(data.queries, data.database, I, kth) >= recall - 0.01


def test_unreachable_recall_falls_back_to_flat_and_says_so():
    # Uniform codes: the 8th neighbour lies ~17 bits away, beyond what four 16-bit tables
    # probed with up to 3 flipped bits each are sure to find (4 * (3 + 1) - 1 = 15 bits).
    codes = synthetic_codes(12_000, 0, 64, "uniform", seed=5).database
    with pytest.warns(UserWarning, match="no candidate reaches"):
        choice = build_auto(codes, 64, {"recall": 0.99}, compare_latency=False,
                            candidates=[parse_spec("MultiHash4x16")])
    assert str(choice.spec) == "flat" and choice.report["request_met"]
    (tried,) = choice.report["candidates"]
    assert tried["param"] == {"nflip": 3} and tried["recall"] < 0.99 and not tried["meets"]
    assert "MultiHash4x16" in choice.report["reason"]
    assert choice.index.ntotal == len(codes)


def test_unmeetable_latency_budget_falls_back_to_flat_and_says_so(clustered):
    with pytest.warns(UserWarning, match="latency_ms=1e-06"):
        choice = build_auto(clustered.database, 64, {"recall": 0.9, "latency_ms": 1e-6})
    assert str(choice.spec) == "flat" and choice.report["request_met"] is False
    assert all(not c["meets"] for c in choice.report["candidates"])


def test_memory_budget_too_small_for_ivf_falls_back_to_flat(clustered):
    n = len(clustered.database)
    budget_mb = n * 8 * 1.5 / 2**20  # holds the codes, not codes + int64 ids
    with pytest.warns(UserWarning, match="no candidate"):
        choice = build_auto(clustered.database, 64, {"recall": 0.9, "memory_mb": budget_mb}, compare_latency=False)
    assert str(choice.spec) == "flat" and "memory_mb" in choice.report["reason"]
    assert all("skipped" in c for c in choice.report["candidates"])


def test_memory_budget_too_small_for_any_index_is_an_error(clustered):
    with pytest.raises(ValueError, match="memory_mb"):
        build_auto(clustered.database, 64, {"memory_mb": 0.01})


def test_generous_latency_budget_keeps_exact_flat(clustered):
    choice = build_auto(clustered.database, 64, {"recall": 0.9, "latency_ms": 1e6})
    assert str(choice.spec) == "flat" and "latency_ms" in choice.report["reason"]


def test_hashindex_auto_saves_the_resolved_spec(tmp_path, clustered):
    index = HashIndex(64, "auto,recall=0.9")
    index.add(clustered.database)
    assert index.spec.kind in ("flat", "IVF", "IVF_HNSW_sampled", "MultiHash", "HNSW")  # by measured latency
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
