"""The torch engine (CPU here) against the numpy brute-force Hamming oracle, through the registry."""

import numpy as np
import pytest
import torch

import hashtorch  # noqa: F401 - registers "torch" where the entry point is not installed
from hashindex import MISSING_DISTANCE
from hashindex.engines import create_engine
from hashindex.testing import brute_force_knn, hamming_matrix, tie_heavy_codes
from hashtorch.engine import plan_tiles, popcount64_, tile_bytes, unpack_signs

BITS = [16, 32, 48, 64, 96, 128, 256]


def _engine(db, **options):
    engine = create_engine("torch", device="cpu", **options)
    engine.fit(db)
    return engine


def _assert_exact(engine, queries, db, k):
    D, I = engine.search(queries, k)
    D_ref, I_ref = brute_force_knn(queries, db, k)
    assert D.dtype == np.int32 and I.dtype == np.int64 and D.shape == I.shape == (len(queries), k)
    np.testing.assert_array_equal(D, D_ref)
    np.testing.assert_array_equal(I, I_ref)  # ties in row order, as CPU IndexBinaryFlat gives them


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("path", ["xor", "matmul"])
def test_equals_brute_force_with_ties_in_row_order(rng, bits, path):
    db = tie_heavy_codes(rng, 3000, bits)  # ties everywhere, including at the k-th distance
    queries = np.concatenate([db[:20], rng.integers(0, 256, size=(13, bits // 8), dtype=np.uint8)])
    engine = _engine(db, path=path)
    for k in (1, 8, 100, 2500):
        _assert_exact(engine, queries, db, k)


@pytest.mark.parametrize("path", ["xor", "matmul"])
def test_k_beyond_ntotal_pads_with_missing(rng, path):
    db = rng.integers(0, 256, size=(37, 8), dtype=np.uint8)
    queries = rng.integers(0, 256, size=(5, 8), dtype=np.uint8)
    engine = _engine(db, path=path)
    D, I = engine.search(queries, 50)
    assert (I[:, 37:] == -1).all() and (D[:, 37:] == MISSING_DISTANCE).all()
    _assert_exact(engine, queries, db, 50)


def test_empty_and_tiny_databases(rng):
    engine = create_engine("torch", device="cpu")
    queries = rng.integers(0, 256, size=(4, 8), dtype=np.uint8)
    D, I = engine.search(queries, 3)  # never fitted
    assert (I == -1).all() and (D == MISSING_DISTANCE).all()
    engine.fit(np.empty((0, 8), dtype=np.uint8))
    assert engine.ntotal == 0 and (engine.search(queries, 3)[1] == -1).all()
    for n in (1, 2, 7):
        db = rng.integers(0, 256, size=(n, 8), dtype=np.uint8)
        for path in ("xor", "matmul"):
            _assert_exact(_engine(db, path=path), queries, db, 5)
    assert engine.search(queries[:0], 3)[0].shape == (0, 3)


@pytest.mark.parametrize("path", ["xor", "matmul"])
def test_tiles_smaller_than_the_data_give_the_same_answer(rng, path):
    # A tiny budget forces many query and row tiles; 3001 rows and 67 queries are multiples of neither.
    db = tie_heavy_codes(rng, 3001, 64)
    queries = np.concatenate([db[:40], rng.integers(0, 256, size=(27, 8), dtype=np.uint8)])
    engine = _engine(db, path=path, memory_budget=120_000)
    _assert_exact(engine, queries, db, 10)
    plan = engine.last_plan
    assert plan.path == path and plan.rows < 3001 and 3001 % plan.rows and plan.queries < 67
    assert plan.bytes <= 120_000


def test_add_appends_rows(rng):
    first = rng.integers(0, 256, size=(500, 12), dtype=np.uint8)
    second = rng.integers(0, 256, size=(300, 12), dtype=np.uint8)
    engine = _engine(first)
    engine.add(second)
    assert engine.ntotal == 800
    _assert_exact(engine, second[:9], np.concatenate([first, second]), 20)


@pytest.mark.parametrize("path", ["xor", "matmul"])
@pytest.mark.parametrize("nq,k,budget", [(1, 8, 1 << 20), (5000, 8, 1 << 24), (5000, 3000, 1 << 24),
                                          (200, 2500, 400_000)])
def test_plan_respects_the_budget(path, nq, k, budget):
    plan = plan_tiles(path, nq, 1_000_000, 8, k, budget)
    assert 1 <= plan.queries <= nq and 1 <= plan.rows <= 1_000_000
    assert plan.bytes == tile_bytes(path, plan.queries, plan.rows, 8, k) <= budget
    # The plan is the largest one that fits: one more row would not.
    if plan.rows < 1_000_000:
        assert tile_bytes(path, plan.queries, plan.rows + 8, 8, k) > budget


def test_budget_too_small_is_one_clear_error(rng):
    engine = _engine(rng.integers(0, 256, size=(100, 8), dtype=np.uint8), memory_budget=100)
    with pytest.raises(ValueError, match="memory_budget=100 bytes is too small"):
        engine.search(rng.integers(0, 256, size=(2, 8), dtype=np.uint8), 8)


def test_bad_queries_are_refused(rng):
    engine = _engine(rng.integers(0, 256, size=(10, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="4-byte codes, the engine holds 8-byte codes"):
        engine.search(np.zeros((1, 4), np.uint8), 1)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        engine.search(np.zeros((1, 8), np.uint8), 0)
    with pytest.raises(ValueError, match="path must be one of"):
        create_engine("torch", device="cpu", path="fast")


def test_popcount_and_signs_match_numpy(rng):
    words = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=1000, dtype=np.int64)
    words[:3] = [-1, 0, np.iinfo(np.int64).min]  # all bits, none, only the sign bit
    got = popcount64_(torch.from_numpy(words.copy())).numpy()
    np.testing.assert_array_equal(got, np.bitwise_count(words.view(np.uint64)))
    codes = rng.integers(0, 256, size=(50, 6), dtype=np.uint8)
    signs = unpack_signs(torch.from_numpy(codes)).numpy().astype(np.int32)
    dot = signs @ signs.T
    np.testing.assert_array_equal((48 - dot) // 2, hamming_matrix(codes, codes))


def test_cuda_without_a_gpu_is_one_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    from hashindex.engines import EngineUnavailable

    with pytest.raises(EngineUnavailable, match="torch.cuda.is_available"):
        create_engine("torch", device="cuda")


@pytest.mark.parametrize("bits", [16, 64, 96])
def test_int8_gemm_path_is_exact(rng, bits):
    # CUDA's default; forced here on the CPU (slower there, same results), 40 queries > 16 rows of A.
    db = tie_heavy_codes(rng, 1000, bits)
    engine = _engine(db, path="matmul")
    engine.use_int_mm = True
    _assert_exact(engine, db[:40], db, 30)
    assert engine.use_int_mm, "torch._int_mm ran without falling back to float"


def test_hash_index_with_the_torch_engine_equals_cpu_flat(rng):
    from hashindex import HashIndex

    db = tie_heavy_codes(rng, 3000, 48)  # 48 bits: stored zero-padded to 64 in the index
    q = np.concatenate([db[:30], rng.integers(0, 256, size=(30, 6), dtype=np.uint8)])
    ids = np.arange(3000) * 3 + 7
    cpu, gpu = HashIndex(48), HashIndex(48, engine="torch")
    for index in (cpu, gpu):
        index.add(db, ids=ids)
    for k in (1, 8, 2500, 3005):
        D_cpu, I_cpu = cpu.search(q, k)
        D_torch, I_torch = gpu.search(q, k)
        np.testing.assert_array_equal(D_torch, D_cpu)
        np.testing.assert_array_equal(I_torch, I_cpu)
    assert gpu.metadata["routing"]["table"] == {"1": "torch"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("bits", [32, 64, 256])
def test_cuda_engine_equals_brute_force(rng, bits):
    # The real device paths: int8 GEMM (or float16) and the XOR path, tiles and budget included.
    db = tie_heavy_codes(rng, 20_000, bits)
    queries = np.concatenate([db[:100], rng.integers(0, 256, size=(100, bits // 8), dtype=np.uint8)])
    for path, kernel in (("xor", "torch"), ("xor", "auto"), ("matmul", "auto")):  # auto: Triton if installed
        for budget in (None, 2 << 20):
            engine = create_engine("torch", device="cuda", path=path, memory_budget=budget, kernel=kernel)
            engine.fit(db)
            assert engine.device == "gpu"
            for k in (1, 8, 2500):
                _assert_exact(engine, queries, db, k)


_TRITON_SCRIPT = """
import numpy as np, hashtorch
from hashindex.engines import create_engine
from hashindex.testing import brute_force_knn, tie_heavy_codes
rng = np.random.default_rng(5)
for bits in (16, 96, 256):
    db = tie_heavy_codes(rng, 2100, bits)
    q = np.concatenate([db[:5], rng.integers(0, 256, (4, bits // 8), dtype=np.uint8)])
    for budget in (None, 200_000):  # one tile, then tiles of ~1,200-2,000 rows (2100 is no multiple)
        engine = create_engine("torch", device="cpu", path="xor", kernel="triton", memory_budget=budget)
        engine.fit(db)
        for k in (1, 8, 2200):
            D, I = engine.search(q, k)
            D_ref, I_ref = brute_force_knn(q, db, k)
            assert (D == D_ref).all() and (I == I_ref).all(), (bits, budget, k)
        assert engine.kernel == "triton", "the kernel fell back to torch ops"
print("exact")
"""


def test_triton_kernel_is_exact_under_the_interpreter():
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "exact", done.stderr[-3000:]


def test_triton_on_the_cpu_without_the_interpreter_is_refused(monkeypatch):
    pytest.importorskip("triton")
    from hashindex.engines import EngineUnavailable

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(EngineUnavailable, match="Triton kernels need a CUDA device"):
        create_engine("torch", device="cpu", kernel="triton")
    assert create_engine("torch", device="cpu").kernel == "torch"
