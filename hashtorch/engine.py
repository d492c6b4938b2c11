"""``TorchEngine``: exact Hamming kNN written with torch, for a GPU (or the CPU, where it is tested).

The codes stay on the device as int64 words, one ``(words, ntotal)`` tensor (code bytes zero-padded
to a multiple of 8). A search walks tiles of ``(queries, rows)`` whose working memory fits
``memory_budget`` bytes, whatever the number of queries or ``k``:

- ``"xor"`` path (small batches): XOR of the words and a SWAR popcount (torch has no popcount),
  so a single query's tile spans millions of rows and the whole device works on it.
- ``"matmul"`` path (large batches): codes unpacked to ±1, ``hamming = (bits - <a, b>) / 2``;
  ``torch._int_mm`` (int8 tensor cores) where its shape rules allow, float16 on CUDA or float32
  otherwise (both exact: every partial sum is an integer of at most ``bits``).

Selection needs no sort of (distance, row) pairs: distances are small integers, so each tile
takes the ``k`` smallest of ``distance * tile_rows + local_row`` (built in one pass; twice the
distance on the matmul path, in int32 when it fits) and the running best keeps
``distance * ntotal + row`` in int64. Unique keys make ``topk`` exact and give
ties in row order, as a CPU ``IndexBinaryFlat`` returns them. Any ``k`` works; ``k > ntotal``
pads with row ``-1`` at :data:`~hashindex.MISSING_DISTANCE`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from hashindex.engines import EngineUnavailable, check_codes, check_k, empty_knn

from .triton_xor import triton_unavailable_reason, xor_keys

PATHS = ("auto", "xor", "matmul")
KERNELS = ("auto", "torch", "triton")
#: Working memory of one search when ``memory_budget`` is not given: CPU / at most this on CUDA.
CPU_BUDGET = 256 << 20
CUDA_BUDGET = 4 << 30

# SWAR popcount masks (each below 2**63, so they are valid int64 constants).
_M1, _M2, _M4 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F

logger = logging.getLogger("hashtorch")


@dataclass(frozen=True)
class TilePlan:
    """How one search is cut: ``queries`` x ``rows`` per tile, and the bytes that tile may use."""

    path: str
    queries: int
    rows: int
    bytes: int


def tile_bytes(path: str, queries: int, rows: int, code_size: int, k: int) -> int:
    """Upper bound of the device bytes one tile allocates (working memory, not the resident codes)."""
    bits = code_size * 8
    words = -(-code_size // 8)
    # per (query, row): xor -> int64 word XOR + int64 temporary + int64 sum + int64 key (the
    # Triton kernel writes only the key); matmul -> float dot + int32 dot + int32/int64 key.
    per_pair = 32 if path == "xor" else 16
    # per row: the words copied out; matmul adds the unpacked bytes, int8 signs and a float copy.
    per_row = 8 * words + (bits * 6 if path == "matmul" else 0)
    # per query: its words and signs, and the running / merged / top-k keys (int64 values, indices).
    per_query = 8 * words + bits * 6 + 48 * k
    return queries * rows * per_pair + rows * per_row + queries * per_query


def plan_tiles(path: str, nq: int, ntotal: int, code_size: int, k: int, budget: int,
               max_queries: int = 4096) -> TilePlan:
    """The largest tiles whose :func:`tile_bytes` fit ``budget``: as many queries as allowed
    (up to ``max_queries``), then as many rows as fit; rows a multiple of 8 (int8 GEMM shapes)."""
    queries = max(1, min(nq, max_queries))
    while True:
        fixed = tile_bytes(path, queries, 0, code_size, k)
        per_row = tile_bytes(path, queries, 1, code_size, k) - fixed
        rows = min(ntotal, (budget - fixed) // per_row) if budget > fixed else 0
        if rows >= 8:
            rows -= rows % 8 if rows < ntotal else 0
        wanted = min(ntotal, 1024)
        if rows >= wanted or queries == 1:
            break
        queries = max(1, queries // 2)
    if rows < 1:
        raise ValueError(f"memory_budget={budget} bytes is too small for one query and one row at k={k} "
                         f"({tile_bytes(path, 1, 1, code_size, k)} bytes needed)")
    return TilePlan(path, queries, rows, tile_bytes(path, queries, rows, code_size, k))


def popcount64_(x: torch.Tensor) -> torch.Tensor:
    """Bits set in each int64 element, computed in place (SWAR) and returned.

    Right shifts of int64 are arithmetic; every mask below clears the copied sign bits.
    """
    t = torch.bitwise_right_shift(x, 1).bitwise_and_(_M1)
    x.sub_(t)
    torch.bitwise_right_shift(x, 2, out=t).bitwise_and_(_M2)
    x.bitwise_and_(_M2).add_(t)
    torch.bitwise_right_shift(x, 4, out=t)
    x.add_(t).bitwise_and_(_M4)  # each byte now holds its own count (0..8): no sign bit left
    for shift in (8, 16, 32):
        torch.bitwise_right_shift(x, shift, out=t)
        x.add_(t)
    return x.bitwise_and_(0x7F)


def unpack_signs(code_bytes: torch.Tensor) -> torch.Tensor:
    """``(n, bytes)`` uint8 codes -> ``(n, bytes * 8)`` int8 of ±1 (bit order as stored)."""
    shifts = torch.arange(8, device=code_bytes.device, dtype=torch.uint8)
    bits = torch.bitwise_right_shift(code_bytes.unsqueeze(-1), shifts).bitwise_and_(1)
    return bits.reshape(len(code_bytes), -1).to(torch.int8).mul_(2).sub_(1)


def _to_words(packed: np.ndarray) -> np.ndarray:
    """``(n, bytes)`` uint8 -> ``(words, n)`` int64, bytes zero-padded to a multiple of 8."""
    n, size = packed.shape
    padded = np.zeros((n, -(-size // 8) * 8), dtype=np.uint8)
    padded[:, :size] = packed
    return np.ascontiguousarray(padded.view("<i8").T)


class TorchEngine:
    """Exact Hamming kNN with torch (see the module docstring).

    ``device``: a torch device (default ``"cuda"`` when available, else ``"cpu"``).
    ``memory_budget``: bytes of working memory per search on top of the stored codes (default
    256 MiB on the CPU; on CUDA a quarter of the free memory, at most 4 GiB).
    ``path``: ``"xor"``, ``"matmul"`` or ``"auto"`` (matmul from ``matmul_min_queries`` queries per tile).
    ``kernel``: the XOR path's kernel, ``"triton"`` (one fused pass, :mod:`hashtorch.triton_xor`),
    ``"torch"`` (plain torch ops) or ``"auto"`` (Triton where it can run).
    """

    name = "torch"

    def __init__(self, device: "str | torch.device | None" = None, memory_budget: int | None = None,
                 path: str = "auto", matmul_min_queries: int = 64, kernel: str = "auto") -> None:
        if path not in PATHS:
            raise ValueError(f"path must be one of {', '.join(PATHS)}; got {path!r}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
        self.torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.torch_device.type == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailable("engine 'torch' cannot run on cuda here: torch.cuda.is_available() is False")
        #: ``"gpu"`` or ``"cpu"``: where the codes live (the :class:`~hashindex.engines.Engine` field).
        self.device = "gpu" if self.torch_device.type == "cuda" else "cpu"
        reason = triton_unavailable_reason(self.torch_device)
        if kernel == "triton" and reason is not None:
            raise EngineUnavailable(f"engine 'torch' cannot use kernel='triton': {reason}")
        self.kernel = "triton" if kernel == "triton" or (kernel == "auto" and reason is None) else "torch"
        self.memory_budget = int(memory_budget) if memory_budget is not None else self._default_budget()
        self.path = path
        self.matmul_min_queries = int(matmul_min_queries)
        self.code_size: int | None = None
        self._words = torch.empty((0, 0), dtype=torch.int64, device=self.torch_device)
        #: int8 GEMM for the matmul path: on CUDA (on the CPU, float32 is ~10x faster).
        self.use_int_mm = self.torch_device.type == "cuda" and hasattr(torch, "_int_mm")
        #: The tiles of the last search (for tests and benchmarks).
        self.last_plan: TilePlan | None = None

    def _default_budget(self) -> int:
        if self.torch_device.type != "cuda":
            return CPU_BUDGET
        free, _ = torch.cuda.mem_get_info(self.torch_device)
        return int(min(CUDA_BUDGET, free // 4))

    def __repr__(self) -> str:
        return (f"TorchEngine(device={str(self.torch_device)!r}, ntotal={self.ntotal}, path={self.path!r}, "
                f"kernel={self.kernel!r})")

    @property
    def ntotal(self) -> int:
        return int(self._words.shape[1])

    # ------------------------------------------------------------------ codes
    def fit(self, packed: np.ndarray) -> None:
        """Replace the stored codes by ``packed`` (uint8 ``(n, bytes)``)."""
        packed = check_codes(packed, None)
        self.code_size = packed.shape[1]
        self._words = torch.from_numpy(_to_words(packed)).to(self.torch_device)

    def add(self, packed: np.ndarray) -> None:
        """Append ``packed`` codes after the stored ones (rows continue from ``ntotal``)."""
        if self.code_size is None:
            return self.fit(packed)
        packed = check_codes(packed, self.code_size)
        new = torch.from_numpy(_to_words(packed)).to(self.torch_device)
        self._words = torch.cat([self._words, new], dim=1)

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(D, I)``: int32 distances and int64 rows, ``(nq, k)``, as a CPU ``IndexBinaryFlat`` gives them."""
        k = check_k(k)
        queries = check_codes(queries, self.code_size, "queries")
        nq, ntotal = len(queries), self.ntotal
        D, rows = empty_knn(nq, k)
        if ntotal == 0 or nq == 0:
            return D, rows
        path = self.path
        if path == "auto":
            path = "matmul" if nq >= self.matmul_min_queries else "xor"
        plan = plan_tiles(path, nq, ntotal, self.code_size, min(k, ntotal), self.memory_budget)
        self.last_plan = plan
        q_words = torch.from_numpy(_to_words(queries)).to(self.torch_device)
        found = min(k, ntotal)
        with torch.inference_mode():
            for start in range(0, nq, plan.queries):
                stop = min(nq, start + plan.queries)
                best = self._search_tile_rows(q_words[:, start:stop], found, plan)
                D[start:stop, :found] = (best // ntotal).to(torch.int32).cpu().numpy()
                rows[start:stop, :found] = (best % ntotal).cpu().numpy()
        return D, rows

    def _search_tile_rows(self, q_words: torch.Tensor, k: int, plan: TilePlan) -> torch.Tensor:
        """Sorted keys ``distance * ntotal + row`` of the ``k`` nearest rows, ``(queries, k)`` int64."""
        q_signs = unpack_signs(self._bytes_of(q_words)) if plan.path == "matmul" else None
        best = None
        for lo in range(0, self.ntotal, plan.rows):
            hi = min(self.ntotal, lo + plan.rows)
            if plan.path == "xor":
                key, scale = self._xor_keys(q_words, lo, hi), 1
            else:
                key, scale = self._matmul_keys(q_signs, lo, hi), 2
            best = self._merge(best, key, scale, lo, k)
        return best

    # A tile's key is ``scale * distance * rows + local_row``: unique per row, ordered by
    # (distance, row), and built in one pass from the distances (or the dot products).
    def _xor_keys(self, q_words: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        if self.kernel == "triton":
            try:
                return xor_keys(q_words, self._words, lo, hi)
            except Exception as exc:  # noqa: BLE001 - a kernel that fails to build on this device/Triton
                logger.warning("Triton XOR kernel failed (%s: %s); using torch kernels", type(exc).__name__, exc)
                self.kernel = "torch"
        dist = None
        for w in range(q_words.shape[0]):
            x = torch.bitwise_xor(q_words[w].unsqueeze(1), self._words[w, lo:hi].unsqueeze(0))
            popcount64_(x)
            dist = x if dist is None else dist.add_(x)
        local = torch.arange(hi - lo, device=dist.device, dtype=torch.int64)
        return torch.add(local, dist, alpha=hi - lo)

    def _matmul_keys(self, q_signs: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        db_signs = unpack_signs(self._bytes_of(self._words[:, lo:hi]))
        rows, bits = db_signs.shape
        dot = self._signed_dot(q_signs, db_signs)
        if (2 * bits + 1) * rows >= 2**31:
            dot = dot.long()
        base = torch.arange(rows, device=dot.device, dtype=dot.dtype).add_(bits * rows)
        return torch.sub(base, dot, alpha=rows)  # (bits - dot) * rows + local, and bits - dot = 2 * distance

    def _signed_dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a @ b.T`` for ±1 int8 rows, exactly, as int32: int8 GEMM where allowed, else float."""
        if self.use_int_mm and a.shape[0] > 16 and b.shape[0] % 8 == 0 and a.shape[1] % 8 == 0:
            try:
                return torch._int_mm(a, b.t())
            except RuntimeError as exc:  # a build or device without int8 GEMM: float from now on
                logger.info("torch._int_mm unavailable (%s); using float matmul", exc)
                self.use_int_mm = False
        dtype = torch.float16 if a.device.type == "cuda" and a.shape[1] <= 2048 else torch.float32
        return (a.to(dtype) @ b.to(dtype).t()).to(torch.int32)

    def _bytes_of(self, words: torch.Tensor) -> torch.Tensor:
        """``(words, n)`` int64 -> the ``(n, code_size)`` uint8 codes they hold."""
        return words.t().contiguous().view(torch.uint8)[:, : self.code_size]

    def _merge(self, best: torch.Tensor | None, key: torch.Tensor, scale: int, lo: int, k: int) -> torch.Tensor:
        """Fold one tile's keys ``(queries, rows)`` into the running best ``distance * ntotal + row``."""
        rows = key.shape[1]
        top = torch.topk(key, min(k, rows), dim=1, largest=False, sorted=best is None).values.long()
        top = (top // (scale * rows)) * self.ntotal + (top % rows) + lo
        if best is None:
            return top
        merged = torch.cat([best, top], dim=1)
        return torch.topk(merged, min(k, merged.shape[1]), dim=1, largest=False, sorted=True).values
