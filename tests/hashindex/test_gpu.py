"""Device placement: CPU fallback without a GPU, and the GPU routing logic (against a stand-in
GPU index on CPU machines, against real faiss-gpu when a GPU is visible)."""

import logging
import warnings

import faiss
import numpy as np
import pytest

from hashindex import HashIndex
from hashindex import gpu as gpu_mod
from hashindex.gpu import DevicePlacement, GpuFallbackWarning, gpu_unavailable_reason, query_batch_size, resolve_device
from hashindex.testing import assert_same_knn, brute_force_knn, tie_heavy_codes


class _ForbiddenGpuIndex:
    """Stands in for faiss.GpuIndexBinaryFlat where no GPU exists: building one is the bug."""

    built = 0

    def __init__(self, *args, **kwargs):
        type(self).built += 1
        raise AssertionError("a GPU index was built although faiss.get_num_gpus() == 0")


@pytest.fixture
def no_gpu(monkeypatch):
    """A Faiss that *has* GPU symbols (as faiss-gpu does) but sees no GPU."""
    _ForbiddenGpuIndex.built = 0
    monkeypatch.setattr(faiss, "GpuIndexBinaryFlat", _ForbiddenGpuIndex, raising=False)
    monkeypatch.setattr(faiss, "StandardGpuResources", _ForbiddenGpuIndex, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    return _ForbiddenGpuIndex


class _EmulatedGpuIndex(faiss.IndexBinaryFlat):
    """A CPU stand-in with GpuIndexBinaryFlat's constructor and limits (an IndexBinary, so it
    can serve as an IVF quantiser): copies the source codes, refuses k > 2048, records batch
    sizes and returns tied neighbours in scrambled order (GPU k-selection leaves ties unordered)."""

    instances: list = []

    def __init__(self, resources, source, config):
        assert isinstance(resources, _EmulatedResources)
        super().__init__(source.d)
        self.add(faiss.vector_to_array(source.xb).reshape(source.ntotal, source.code_size))
        self.batches: list[int] = []
        type(self).instances.append(self)

    def search(self, x, k):
        assert k <= 2048, "GPU only supports k <= 2048"
        self.batches.append(len(x))
        D, I = super().search(x, k)
        scramble = np.random.default_rng(len(self.batches)).random(D.shape)
        order = np.lexsort((scramble, D), axis=1)  # same distances, tied ids shuffled
        return np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)


class _EmulatedResources:
    pass


class _Config:
    device = -1


@pytest.fixture
def emulated_gpu(monkeypatch):
    _EmulatedGpuIndex.instances = []
    monkeypatch.setattr(faiss, "GpuIndexBinaryFlat", _EmulatedGpuIndex, raising=False)
    monkeypatch.setattr(faiss, "GpuIndexBinaryFlatConfig", _Config, raising=False)
    monkeypatch.setattr(faiss, "StandardGpuResources", _EmulatedResources, raising=False)
    monkeypatch.setattr(faiss, "getMaxKSelection", lambda: 2048, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    return _EmulatedGpuIndex


def test_resolve_device_validates_and_keeps_cpu():
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="cpu, gpu, auto"):
        resolve_device("cuda")


def test_this_faiss_build_reports_why_there_is_no_gpu():
    # faiss-cpu in CI: no GpuIndexBinaryFlat symbol at all; faiss-gpu without a device: no GPU.
    if hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is visible here")
    assert gpu_unavailable_reason() is not None
    with pytest.warns(GpuFallbackWarning, match="searching on the CPU"):
        assert resolve_device("gpu") == "cpu"


@pytest.mark.parametrize("device", ["gpu", "auto"])
def test_fallback_never_builds_a_gpu_index(no_gpu, rng, device, caplog):
    db = tie_heavy_codes(rng, 2000, 64)
    q = db[:25]
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO, "hashindex.gpu"):
        warnings.simplefilter("always")
        index = HashIndex(64, "flat", device=device)
        index.add(db)
        D, I = index.search(q, k=10)
    fallback = [w for w in caught if issubclass(w.category, GpuFallbackWarning)]
    if device == "gpu":
        assert len(fallback) == 1 and "get_num_gpus() == 0" in str(fallback[0].message)
    else:  # "auto" falls back quietly, with an INFO log line saying why
        assert not fallback
        assert "get_num_gpus() == 0" in caplog.text
    assert index.device == "cpu"
    assert no_gpu.built == 0
    D_ref, I_ref = brute_force_knn(q, db, 10)
    np.testing.assert_array_equal(D, D_ref)
    np.testing.assert_array_equal(I, I_ref)


def test_cpu_device_never_looks_at_gpu_symbols(no_gpu, rng):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index = HashIndex(32, "flat", device="cpu")
        index.add(rng.integers(0, 256, size=(100, 4), dtype=np.uint8))
        index.search(rng.integers(0, 256, size=(3, 4), dtype=np.uint8), k=4)
    assert no_gpu.built == 0


def test_load_and_from_shards_take_a_device(no_gpu, rng, tmp_path):
    index = HashIndex(64)
    index.add(rng.integers(0, 256, size=(50, 8), dtype=np.uint8))
    index.save(tmp_path / "idx")
    with pytest.warns(GpuFallbackWarning):
        loaded = HashIndex.load(tmp_path / "idx", device="gpu")
    assert loaded.device == "cpu" and no_gpu.built == 0


def test_query_batch_size_bounds_output_bytes():
    assert query_batch_size(k=8, code_bytes=8, budget=1000) == 1000 // (8 * 16 + 8)
    assert query_batch_size(k=2048, code_bytes=8, budget=10) == 1  # never zero


@pytest.mark.parametrize("bits", [32, 64])
def test_gpu_path_equals_cpu_flat_with_ties_ordered_by_row(emulated_gpu, rng, bits):
    db = tie_heavy_codes(rng, 3000, bits)
    q = np.concatenate([db[:40], rng.integers(0, 256, size=(40, bits // 8), dtype=np.uint8)])
    cpu, gpu = HashIndex(bits, device="cpu"), HashIndex(bits, device="gpu")
    for index in (cpu, gpu):
        index.add(db)
    assert gpu.device == "gpu"
    for k in (1, 8, 200):
        D_cpu, I_cpu = cpu.search(q, k)
        D_gpu, I_gpu = gpu.search(q, k)
        # The stand-in returns CPU's neighbour sets with ties scrambled; the placement
        # re-orders ties by row, so rankings are identical, not just equal up to ties.
        np.testing.assert_array_equal(D_gpu, D_cpu)
        np.testing.assert_array_equal(I_gpu, I_cpu)
    assert len(emulated_gpu.instances) == 1, "the GPU copy is built once and reused"


def test_gpu_queries_are_streamed_in_bounded_batches(emulated_gpu, rng):
    db = rng.integers(0, 256, size=(500, 8), dtype=np.uint8)
    q = rng.integers(0, 256, size=(1000, 8), dtype=np.uint8)
    placement = DevicePlacement("gpu", batch_bytes=64 * (16 * 16 + 8))  # room for exactly 64 queries
    flat = faiss.IndexBinaryFlat(64)
    flat.add(db)
    D, I = placement.search(flat, q, 16)
    batches = emulated_gpu.instances[0].batches
    assert max(batches) == 64 and sum(batches) == 1000
    D_ref, I_ref = brute_force_knn(q, db, 16)
    np.testing.assert_array_equal(D, D_ref)
    np.testing.assert_array_equal(I, I_ref)


def test_k_above_gpu_limit_falls_back_to_cpu_with_a_message(emulated_gpu, rng):
    db = rng.integers(0, 256, size=(3000, 8), dtype=np.uint8)
    q = rng.integers(0, 256, size=(5, 8), dtype=np.uint8)
    index = HashIndex(64, device="gpu", engine="faiss-gpu")  # Faiss GPU on every call, not routed
    index.add(db)
    with pytest.warns(GpuFallbackWarning, match="k=2500 exceeds the GPU k-selection limit of 2048"):
        D, I = index.search(q, k=2500)
    assert not emulated_gpu.instances, "k > 2048 must not reach the GPU index"
    D_ref, I_ref = brute_force_knn(q, db, 2500)
    assert_same_knn(D_ref, I_ref, D, I)
    index.search(q, k=2048)  # at the limit: GPU
    assert len(emulated_gpu.instances) == 1


def test_gpu_copy_is_rebuilt_after_add(emulated_gpu, rng):
    index = HashIndex(64, device="gpu", engine="faiss-gpu")
    first = rng.integers(0, 256, size=(100, 8), dtype=np.uint8)
    index.add(first)
    index.search(first[:2], k=1)
    second = rng.integers(0, 256, size=(100, 8), dtype=np.uint8)
    index.add(second)
    D, I = index.search(second[:5], k=1)
    np.testing.assert_array_equal(D[:, 0], 0)
    np.testing.assert_array_equal(I[:, 0], np.arange(100, 105))
    assert [g.ntotal for g in emulated_gpu.instances] == [100, 200]


def test_ivf_uses_a_gpu_quantizer_and_still_saves(emulated_gpu, rng, tmp_path):
    db = tie_heavy_codes(rng, 4000, 64)
    q = db[:30]
    cpu, gpu = HashIndex(64, "IVF16,nprobe=4"), HashIndex(64, "IVF16,nprobe=4", device="gpu")
    for index in (cpu, gpu):
        index.add(db)
    np.testing.assert_array_equal(gpu.search(q, 10)[0], cpu.search(q, 10)[0])
    assert emulated_gpu.instances and emulated_gpu.instances[0].ntotal == 16, "only the 16 centroids go to the GPU"
    assert isinstance(faiss.downcast_IndexBinary(gpu.faiss_index.quantizer), faiss.IndexBinaryFlat)
    gpu.save(tmp_path / "ivf")  # the CPU quantiser is back in place: the index serialises
    assert len(HashIndex.load(tmp_path / "ivf")) == len(db)


def test_index_without_gpu_version_searches_on_cpu_with_a_message(emulated_gpu, rng):
    db = rng.integers(0, 256, size=(300, 8), dtype=np.uint8)
    index = HashIndex(64, "HNSW16", device="gpu")
    index.add(db)
    with pytest.warns(GpuFallbackWarning, match="IndexBinaryHNSW has no GPU version"):
        index.search(db[:3], k=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once, not on every query
        index.search(db[:3], k=3)
    assert not emulated_gpu.instances


@pytest.mark.skipif(gpu_unavailable_reason() is not None, reason=f"no GPU: {gpu_unavailable_reason()}")
def test_real_gpu_flat_equals_cpu_flat(rng):
    db = tie_heavy_codes(rng, 200_000, 64)
    q = np.concatenate([db[:500], rng.integers(0, 256, size=(500, 8), dtype=np.uint8)])
    cpu, gpu = HashIndex(64, device="cpu"), HashIndex(64, device="gpu")
    for index in (cpu, gpu):
        index.add(db)
    assert gpu.device == "gpu" and gpu_mod.gpu_kind(gpu.faiss_index) == "flat"
    for k in (1, 8, 100, 2048):
        D_cpu, I_cpu = cpu.search(q, k)
        D_gpu, I_gpu = gpu.search(q, k)
        assert_same_knn(D_cpu, I_cpu, D_gpu, I_gpu, database=db, queries=q)
