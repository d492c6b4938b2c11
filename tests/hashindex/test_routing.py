"""Per-call routing with fake engines on a fake clock: calibration, the table, lazy filling, the HashIndex hook."""

import json

import numpy as np
import pytest

from hashindex import HashIndex
from hashindex import engines as engines_mod
from hashindex.engines import FaissCpuEngine
from hashindex.routing import BATCH_SIZES, Router
from hashindex.testing import brute_force_knn, tie_heavy_codes


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeEngine(FaissCpuEngine):
    """Exact (Faiss CPU underneath), but each call costs ``overhead + per_query * nq`` fake seconds."""

    device = "gpu"

    def __init__(self, clock=None, overhead=0.0, per_query=0.0):
        super().__init__()
        self.clock, self.overhead, self.per_query = clock, overhead, per_query
        self.calls: list[int] = []
        self.added: list[int] = []

    def add(self, packed):
        self.added.append(len(packed))
        super().add(packed)

    def search(self, queries, k):
        self.calls.append(len(queries))
        if self.clock is not None:
            self.clock.now += self.overhead + self.per_query * len(queries)
        return super().search(queries, k)


def _reader(db):
    return lambda lo, hi: db[lo:hi].copy()


@pytest.fixture
def db(rng):
    return tie_heavy_codes(rng, 1000, 64)


def _router(db, clock, **options):
    # "gpu": 5 ms a call whatever its size; "cpu": 0.1 ms per query.
    gpu = FakeEngine(clock, overhead=5e-3, per_query=1e-6)
    cpu = FakeEngine(clock, per_query=1e-4)
    router = Router({"gpu": gpu, "cpu": cpu}, timer=clock, **options)
    router.attach(len(db), _reader(db))
    return router, gpu, cpu


def test_calibration_picks_the_fastest_engine_per_batch_size(db):
    clock = Clock()
    router, gpu, cpu = _router(db, clock)
    report = router.calibrate(k=8)
    assert router.table == {1: "cpu", 16: "cpu", 256: "gpu", 4096: "gpu"}
    assert report["ms_per_call"]["cpu"]["16"] == pytest.approx(1.6)
    assert report["ms_per_call"]["gpu"]["4096"] == pytest.approx(5 + 4.096)
    assert report["k"] == 8 and report["ntotal"] == 1000
    json.dumps(report)  # goes into index.metadata
    # Each call goes to the engine of the largest calibrated size <= nq.
    assert [router.choose(n) for n in (1, 15, 16, 255, 256, 10_000)] == ["cpu"] * 4 + ["gpu"] * 2


def test_calibration_queries_are_database_rows_repeated_to_the_largest_size(db):
    router, gpu, _ = _router(db, Clock())
    router.calibrate(k=4)
    assert max(gpu.calls) == BATCH_SIZES[-1] > len(db)


def test_an_engine_predicted_past_max_call_s_is_not_timed_at_larger_sizes(db):
    clock = Clock()
    router, gpu, cpu = _router(db, clock, max_call_s=0.02)
    router.calibrate(k=8)
    # cpu: 0.1 ms and 1.6 ms at 1 and 16 queries: the line predicts 25.6 ms > 20 ms at 256.
    assert sorted(set(cpu.calls)) == [1, 16] and cpu.calls.count(16) == 2
    assert set(router.report["ms_per_call"]["cpu"]) == {"1", "16"}
    assert set(router.report["ms_per_call"]["gpu"]) == {"1", "16", "256", "4096"}  # flat: 5 ms + 1 us/query
    assert router.table == {1: "cpu", 16: "cpu", 256: "gpu", 4096: "gpu"}


def test_an_engine_whose_call_took_longer_than_max_call_s_stops_there(db):
    clock = Clock()
    router, gpu, cpu = _router(db, clock, max_call_s=0.004)
    router.calibrate(k=8)
    assert set(router.report["ms_per_call"]["gpu"]) == {"1"}  # 5 ms > 4 ms at once
    assert router.table[4096] == router.table[16] == "cpu"  # the only one timed there


def test_search_calibrates_once_then_routes_and_is_exact(db, rng):
    clock = Clock()
    router, gpu, cpu = _router(db, clock)
    q = db[:300]
    D, I = router.search(q, 10)
    D_ref, I_ref = brute_force_knn(q, db, 10)
    np.testing.assert_array_equal(D, D_ref)
    np.testing.assert_array_equal(I, I_ref)
    assert gpu.calls[-1] == 300  # 300 >= 256: the gpu engine
    n_cpu = len(cpu.calls)
    router.search(q[:3], 10)
    assert len(cpu.calls) == n_cpu + 1 and cpu.calls[-1] == 3  # no second calibration


def test_engines_are_filled_lazily_and_only_with_new_rows(db):
    gpu, cpu = FakeEngine(), FakeEngine()
    router = Router({"gpu": gpu, "cpu": cpu}, table={1: "cpu", 100: "gpu"})
    router.attach(600, _reader(db))
    router.search(db[:2], 3)
    assert cpu.added == [600] and gpu.added == []  # gpu was never used: it holds nothing
    router.attach(1000, _reader(db))
    router.search(db[:2], 3)
    router.search(db[:200], 3)
    assert cpu.added == [600, 400] and gpu.added == [1000]
    router.attach(500, _reader(db))  # fewer rows than an engine holds: it is refilled
    D, I = router.search(db[:2], 3)
    assert cpu.ntotal == 500 and cpu.added[-1] == 500


def test_a_given_table_is_used_without_calibration(db):
    gpu, cpu = FakeEngine(), FakeEngine()
    router = Router({"gpu": gpu, "cpu": cpu}, table={1: "gpu"})
    router.attach(len(db), _reader(db))
    router.search(db[:5000 % len(db) + 1], 1)
    assert cpu.calls == [] and router.report == {"table": {"1": "gpu"}, "calibrated": False}
    with pytest.raises(ValueError, match=r"names engines \['torch'\] that are not among \['cpu', 'gpu'\]"):
        Router({"gpu": gpu, "cpu": cpu}, table={1: "torch"})


@pytest.fixture
def fake_gpu_engine(monkeypatch):
    """A registered engine that says it runs on a GPU (exact, Faiss CPU underneath)."""
    monkeypatch.setattr(engines_mod, "_FACTORIES", dict(engines_mod._FACTORIES))
    engines_mod._discover()
    engines_mod.register_engine("fake-gpu", FakeEngine)
    return FakeEngine


def test_hash_index_routes_flat_searches_on_gpu_or_auto_and_records_the_table(fake_gpu_engine, rng, tmp_path):
    db = tie_heavy_codes(rng, 3000, 64)
    q = np.concatenate([db[:30], rng.integers(0, 256, size=(30, 8), dtype=np.uint8)])
    index = HashIndex(64, device="auto")
    index.add(db)
    D, I = index.search(q, 20)
    D_ref, I_ref = brute_force_knn(q, db, 20)
    np.testing.assert_array_equal(D, D_ref)
    np.testing.assert_array_equal(I, I_ref)
    routing = index.metadata["routing"]
    assert {"faiss-cpu", "fake-gpu"} <= set(routing["ms_per_call"])  # (+ real GPU engines on a GPU machine)
    assert set(routing["table"]) == {str(b) for b in BATCH_SIZES}
    index.add(q[:5])  # the engines follow the index
    D, I = index.search(q[:5], 1)
    np.testing.assert_array_equal(D[:, 0], 0)
    index.save(tmp_path / "idx")
    assert HashIndex.load(tmp_path / "idx").metadata["routing"]["table"] == routing["table"]


def test_hash_index_engine_forces_one_engine_or_a_table(fake_gpu_engine, rng):
    db = rng.integers(0, 256, size=(500, 8), dtype=np.uint8)
    index = HashIndex(64, engine={1: "faiss-cpu", 64: "fake-gpu"})  # even on device="cpu"
    index.add(db)
    index.search(db[:3], 4)
    engine = index._routing._router.engines["fake-gpu"]
    assert engine.calls == []
    D, I = index.search(db[:64], 4)
    assert engine.calls == [64] and index.metadata["routing"]["calibrated"] is False
    np.testing.assert_array_equal(I[:, 0], np.arange(64))


def test_load_and_from_shards_take_an_engine(fake_gpu_engine, rng, tmp_path):
    from hashindex import ShardWriter

    db = rng.integers(0, 256, size=(300, 8), dtype=np.uint8)
    with ShardWriter(tmp_path / "store", 64, shard_size=100) as writer:
        writer.add(db, labels=np.zeros(len(db), dtype=np.int64))
    built = HashIndex.from_shards(tmp_path / "store", engine="fake-gpu", progress=False)
    built.save(tmp_path / "idx")
    for index in (built, HashIndex.load(tmp_path / "idx", engine="fake-gpu")):
        D, I = index.search(db[:5], 3)
        assert index._routing._router.engines["fake-gpu"].calls == [5]
        np.testing.assert_array_equal(I[:, 0], np.arange(5))
    assert HashIndex.load(tmp_path / "idx")._routing.fixed is None  # the engine is not saved


def test_hash_index_without_a_gpu_engine_is_not_routed(rng):
    index = HashIndex(64, device="cpu")
    index.add(rng.integers(0, 256, size=(100, 8), dtype=np.uint8))
    index.search(rng.integers(0, 256, size=(2, 8), dtype=np.uint8), 3)
    assert "routing" not in index.metadata


def test_an_unknown_engine_is_refused_at_construction():
    with pytest.raises(ValueError, match="unknown engine 'nope'; available:"):
        HashIndex(64, engine="nope")
