"""Where a :class:`~hashindex.HashIndex` searches: the CPU, or a GPU through faiss-gpu.

``device`` is ``"cpu"``, ``"gpu"`` or ``"auto"``:

- ``"cpu"``: plain Faiss CPU search (the default; nothing here touches a GPU).
- ``"gpu"``: search on GPU 0 when this Faiss build has GPU support *and*
  ``faiss.get_num_gpus() > 0``; otherwise fall back to the CPU with a
  :class:`GpuFallbackWarning` that says why.
- ``"auto"``: the GPU when there is one, the CPU otherwise (the reason is logged at INFO).

What runs on the GPU, as far as Faiss supports binary indexes there:

- ``flat``: a ``GpuIndexBinaryFlat`` copy of the CPU ``IndexBinaryFlat`` (exact; distances
  equal the CPU ones, ids equal up to the order of ties at the k-th distance).
- ``IVF<nlist>``: trained and filled on the CPU; only its coarse quantiser (an
  ``IndexBinaryFlat`` over the centroids) is copied to the GPU. Faiss has no GPU
  binary inverted lists, so the list scan stays on the CPU.
- ``HNSW`` / ``MultiHash``: no GPU version in Faiss; searched on the CPU (with a message).

GPU limits are respected: Faiss's GPU k-selection handles ``k <= 2048``
(``faiss.getMaxKSelection()``); a larger ``k`` (or IVF ``nprobe``) is searched on the CPU
for that call. Queries go to the GPU in batches sized so that one batch's outputs stay
under :data:`GPU_BATCH_BYTES`, which bounds GPU memory whatever the number of queries.

The CPU index stays the source of truth (it is what ``save`` writes and ``add`` grows);
the GPU copy is rebuilt lazily when the CPU index has changed. faiss-cpu builds have no
``GpuIndexBinaryFlat`` at all, and faiss-gpu aborts the process if a GPU index is built
without a GPU, so every GPU symbol is looked up with ``getattr`` and only after the
device check.
"""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

from .codes import MISSING_DISTANCE

DEVICES = ("cpu", "gpu", "auto")
#: Faiss's GPU k-selection limit when the build does not report it (2048 since Faiss 1.7.3).
DEFAULT_GPU_MAX_K = 2048
#: Bytes of GPU output (distances, int32 + int64 labels) and queries allowed per query batch.
GPU_BATCH_BYTES = 256 << 20

logger = logging.getLogger("hashindex.gpu")


class GpuFallbackWarning(UserWarning):
    """``device="gpu"`` was asked for but the search runs on the CPU; the message says why."""


def gpu_unavailable_reason() -> str | None:
    """Why a GPU index cannot be used here, or ``None`` if it can."""
    if not hasattr(faiss, "GpuIndexBinaryFlat") or not hasattr(faiss, "StandardGpuResources"):
        return "this Faiss build has no GPU support (faiss-cpu is installed; install faiss-gpu)"
    num_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if num_gpus <= 0:
        return "faiss.get_num_gpus() == 0 (no visible CUDA device)"
    return None


def resolve_device(device: str) -> str:
    """Map ``"cpu" | "gpu" | "auto"`` to the device searches will really use: ``"cpu"`` or ``"gpu"``."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if device == "cpu":
        return "cpu"
    reason = gpu_unavailable_reason()
    if reason is None:
        return "gpu"
    if device == "gpu":
        warnings.warn(f"device='gpu' requested but {reason}; searching on the CPU", GpuFallbackWarning,
                      stacklevel=3)
    else:
        logger.info("device='auto': %s; searching on the CPU", reason)
    return "cpu"


def gpu_max_k() -> int:
    """The largest ``k`` Faiss's GPU k-selection accepts in this build."""
    getter = getattr(faiss, "getMaxKSelection", None) or getattr(faiss, "get_max_k_selection", None)
    return int(getter()) if getter is not None else DEFAULT_GPU_MAX_K


def query_batch_size(k: int, code_bytes: int, budget: int = GPU_BATCH_BYTES) -> int:
    """Queries per GPU call so that the batch's queries and ``(n, k)`` outputs fit in ``budget`` bytes."""
    per_query = k * (4 + 8 + 4) + code_bytes  # int32 distances, int64 labels, int32 temporaries
    return max(1, budget // per_query)


def gpu_kind(index: faiss.IndexBinary) -> str | None:
    """``"flat"`` or ``"ivf"`` for the index types with a GPU path, ``None`` for the others."""
    if isinstance(index, faiss.IndexBinaryFlat):
        return "flat"
    if isinstance(index, faiss.IndexBinaryIVF) and isinstance(faiss.downcast_IndexBinary(index.quantizer),
                                                                faiss.IndexBinaryFlat):
        return "ivf"
    return None


def search_cpu(index: faiss.IndexBinary, packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(packed, k)`` minus the wrapper's checks (about 1 µs a call).

    ``packed`` must already be uint8 rows of the index's width (HashIndex validates queries
    once, on entry).
    """
    packed = np.ascontiguousarray(packed, dtype=np.uint8)  # free when it already is
    n = len(packed)
    D = np.empty((n, k), dtype=np.int32)
    rows = np.empty((n, k), dtype=np.int64)
    index.search_c(n, faiss.swig_ptr(packed), k, faiss.swig_ptr(D), faiss.swig_ptr(rows))
    return D, rows


def order_ties_by_row(D: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each result row by (distance, row), missing neighbours (row -1) last.

    Distances are small integers, so ``distance * span + row`` is one int64 key per
    neighbour and a single sort orders ties (a lexsort of the two arrays costs ~3x more).
    """
    span = int(rows.max()) + 1 if rows.size else 1
    key = D.astype(np.int64)
    key *= span
    key += rows
    missing = rows < 0
    any_missing = bool(missing.any())
    if any_missing:
        key[missing] = np.iinfo(np.int64).max
    _sort_rows(key)
    if any_missing:
        missing = key == np.iinfo(np.int64).max
    if not np.all(D[:, 1:] >= D[:, :-1]):  # not ascending (Faiss's are): read distances off the keys
        D = np.where(missing, MISSING_DISTANCE, key // span).astype(np.int32)
    # With distances ascending, sorting only permuted rows inside runs of equal distance.
    rows = key - D.astype(np.int64) * span
    if any_missing:
        rows[missing] = -1
        D = np.where(missing, MISSING_DISTANCE, D).astype(np.int32)
    return D, rows


def _sort_rows(key: np.ndarray, rows_per_task: int = 1024) -> None:
    """``key.sort(axis=1)`` in place, blocks of rows on several threads (numpy's sort releases the GIL)."""
    if key.size < (1 << 20):
        key.sort(axis=1)
        return
    blocks = [key[start : start + rows_per_task] for start in range(0, len(key), rows_per_task)]
    with ThreadPoolExecutor(min(len(blocks), os.cpu_count() or 1)) as pool:
        list(pool.map(lambda block: block.sort(axis=1), blocks))


class DevicePlacement:
    """Routes a HashIndex's kNN searches to the CPU index or to a lazily built GPU copy.

    ``requested`` is the user's ``device`` string; :attr:`device` is what is really used.
    Each fallback reason is reported once per placement, not once per query.
    """

    def __init__(self, requested: str = "cpu", *, gpu_id: int = 0, batch_bytes: int = GPU_BATCH_BYTES) -> None:
        self.requested = requested
        self.device = resolve_device(requested)
        self.gpu_id = int(gpu_id)
        self.batch_bytes = int(batch_bytes)
        self._resources = None
        self._gpu_index = None
        self._source = None  # the CPU index the GPU copy was made from
        self._source_ntotal = -1
        self._reported: set[str] = set()

    def __repr__(self) -> str:
        return f"DevicePlacement(requested={self.requested!r}, device={self.device!r})"

    def search(self, index: faiss.IndexBinary, packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """kNN of ``packed`` in ``index`` (Faiss rows), on the GPU when placed there and supported."""
        if self.device == "cpu":
            return search_cpu(index, packed, k)
        kind = gpu_kind(index)
        if kind is None:
            self._fall_back(f"{type(index).__name__} has no GPU version in Faiss")
            return search_cpu(index, packed, k)
        limit = gpu_max_k()
        if kind == "flat" and k > limit:
            self._fall_back(f"k={k} exceeds the GPU k-selection limit of {limit}")
            return search_cpu(index, packed, k)
        if kind == "ivf" and index.nprobe > limit:
            self._fall_back(f"nprobe={index.nprobe} exceeds the GPU k-selection limit of {limit}")
            return search_cpu(index, packed, k)
        gpu = self._gpu_copy(index, kind)
        if kind == "ivf":
            return self._search_ivf_with_gpu_quantizer(index, gpu, packed, k)
        return self._search_batches(gpu, packed, k)

    def invalidate(self) -> None:
        """Drop the GPU copy: the CPU index was edited in a way its ``ntotal`` may not show."""
        self._gpu_index, self._source, self._source_ntotal = None, None, -1

    # ------------------------------------------------------------------ internals
    def _fall_back(self, reason: str) -> None:
        if reason not in self._reported:
            self._reported.add(reason)
            warnings.warn(f"{reason}; searching on the CPU", GpuFallbackWarning, stacklevel=4)

    def _gpu_copy(self, index: faiss.IndexBinary, kind: str):
        """The GPU copy of ``index`` (flat) or of its quantiser (IVF), rebuilt when ``index`` changed."""
        if self._gpu_index is not None and self._source is index and self._source_ntotal == index.ntotal:
            return self._gpu_index
        self._gpu_index = None  # free the stale copy before allocating the new one
        if self._resources is None:
            self._resources = faiss.StandardGpuResources()
        config = faiss.GpuIndexBinaryFlatConfig()
        config.device = self.gpu_id
        source = index if kind == "flat" else faiss.downcast_IndexBinary(index.quantizer)
        self._gpu_index = faiss.GpuIndexBinaryFlat(self._resources, source, config)
        self._source, self._source_ntotal = index, index.ntotal
        return self._gpu_index

    def _search_batches(self, gpu_index, packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        nq = len(packed)
        D = np.empty((nq, k), dtype=np.int32)
        rows = np.empty((nq, k), dtype=np.int64)
        step = query_batch_size(k, packed.shape[1], self.batch_bytes)
        for start in range(0, nq, step):
            stop = min(nq, start + step)
            D[start:stop], rows[start:stop] = gpu_index.search(packed[start:stop], k)
        # GPU k-selection leaves equal distances in no particular order; order them by row
        # as the CPU search does, so rankings (and votes) do not depend on the device.
        return order_ties_by_row(D, rows)

    def _search_ivf_with_gpu_quantizer(self, index, gpu_quantizer, packed, k):
        # The inverted lists stay on the CPU; only the coarse assignment uses the GPU quantiser.
        # The CPU quantiser is put back before returning so save() never sees a GPU object.
        cpu_quantizer = index.quantizer
        index.quantizer = gpu_quantizer
        try:
            return search_cpu(index, packed, k)
        finally:
            index.quantizer = cpu_quantizer
