"""One fused Triton kernel for the torch engine's XOR path: tile keys in a single pass over the codes.

The plain-torch path runs a dozen elementwise kernels per word (XOR, the SWAR popcount steps,
the key); this kernel reads each stored word once and writes each key once. It runs where Triton
is importable and the device is CUDA, and on the CPU under Triton's interpreter
(``TRITON_INTERPRET=1``, which is how the tests check it against brute force).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton: the engine keeps its torch kernels
    triton = None

BLOCK = 1024


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the kernel cannot run on ``device`` here, or ``None`` if it can."""
    if triton is None:
        return "Triton is not installed"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"Triton kernels need a CUDA device (or TRITON_INTERPRET=1), not {device.type}"
    return None


if triton is not None:

    @triton.jit
    def _xor_keys_kernel(q_ptr, db_ptr, key_ptr, rows, stride, WORDS: tl.constexpr, BLOCK: tl.constexpr):
        # Program (b, q): rows b*BLOCK .. of the tile against query q. q_ptr: (queries, WORDS) int64;
        # db_ptr: the tile's first row in a (WORDS, stride) int64 array; key_ptr: (queries, rows) int64.
        query = tl.program_id(1).to(tl.int64)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < rows
        dist = tl.zeros([BLOCK], dtype=tl.int64)
        for w in tl.static_range(WORDS):
            x = tl.load(db_ptr + offs, mask=mask, other=0) ^ tl.load(q_ptr + query * WORDS + w)
            # SWAR popcount; right shifts are arithmetic, every mask clears the copied sign bits.
            x = x - ((x >> 1) & 0x5555555555555555)
            x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
            x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
            x = x + (x >> 8)
            x = x + (x >> 16)
            x = x + (x >> 32)
            dist += x & 0x7F
            db_ptr += stride
        tl.store(key_ptr + query * rows + offs, dist * rows + offs, mask=mask)


def xor_keys(q_words: torch.Tensor, words: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Keys ``distance * rows + local_row`` of rows ``lo:hi`` of ``words`` ``(W, ntotal)`` against
    ``q_words`` ``(W, queries)``: ``(queries, hi - lo)`` int64, as the torch path computes them."""
    queries = q_words.t().contiguous()
    rows = hi - lo
    keys = torch.empty((queries.shape[0], rows), dtype=torch.int64, device=words.device)
    grid = (triton.cdiv(rows, BLOCK), queries.shape[0])
    _xor_keys_kernel[grid](queries, words[:, lo:], keys, rows, words.stride(0),
                           WORDS=words.shape[0], BLOCK=BLOCK)
    return keys
