"""Binary code layout: validation, packing and unpacking.

Codes travel through hashindex packed as Faiss expects them: ``uint8`` arrays
of shape ``(n, bits // 8)`` where bit ``j`` of a code lives in byte ``j // 8``
at position ``j % 8`` (least significant bit first, as ``faiss.real_to_binary``
packs them).
"""

from __future__ import annotations

import numpy as np

SUPPORTED_BITS_MULTIPLE = 8

#: Distance reported next to a ``-1`` id when fewer than k neighbours exist (as Faiss does).
MISSING_DISTANCE = np.iinfo(np.int32).max


def check_bits(bits: int) -> int:
    """Return ``bits`` as an int, or raise ``ValueError`` if it is not a positive multiple of 8."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ValueError(f"bits must be an integer, got {bits!r}")
    if bits <= 0 or bits % SUPPORTED_BITS_MULTIPLE:
        raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
    return int(bits)


def pack_bits(bits_array: np.ndarray) -> np.ndarray:
    """Pack an ``(n, bits)`` array of {0,1} / bool into ``(n, bits // 8)`` uint8 codes."""
    return np.packbits(np.asarray(bits_array, dtype=bool), axis=1, bitorder="little")


def unpack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unpack ``(n, bits // 8)`` uint8 codes into an ``(n, bits)`` uint8 array of 0 / 1."""
    return np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1, count=bits, bitorder="little")


def as_packed_codes(codes, bits: int, name: str = "codes") -> np.ndarray:
    """Validate ``codes`` and return them packed, C-contiguous, ``(n, bits // 8)`` uint8.

    Accepted: packed uint8 ``(n, bits // 8)``, or unpacked ``(n, bits)`` arrays of
    bool, {0, 1} or {-1, +1} (any integer or float dtype). A single code of shape
    ``(bits // 8,)`` or ``(bits,)`` is not accepted: pass ``codes[None]``.
    """
    nbytes = bits // 8
    if type(codes) is np.ndarray and codes.dtype == np.uint8 and codes.ndim == 2 and codes.shape[1] == nbytes:
        return np.ascontiguousarray(codes)  # the common case, first: it runs once per query
    expected = f"expected packed uint8 (n, {nbytes}) or unpacked (n, {bits}) bool/{{0,1}}/{{-1,+1}}"
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"{name}: got a {arr.ndim}-D array of shape {arr.shape}; {expected}")
    width = arr.shape[1]
    if width == nbytes and arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if width == bits:
        return pack_bits(_unpacked_to_bool(arr, name, expected))
    if width == nbytes:
        raise ValueError(f"{name}: packed codes must be uint8, got dtype {arr.dtype}; {expected}")
    raise ValueError(f"{name}: wrong code width {width} for {bits}-bit codes; {expected}")


def _unpacked_to_bool(arr: np.ndarray, name: str, expected: str) -> np.ndarray:
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name}: unsupported dtype {arr.dtype}; {expected}")
    if arr.size == 0:
        return arr.astype(bool)
    values = np.unique(arr)
    if np.all(np.isin(values, (0, 1))):
        return arr.astype(bool)
    if np.all(np.isin(values, (-1, 1))):
        return arr > 0
    shown = ", ".join(str(v) for v in values[:5])
    raise ValueError(f"{name}: unpacked codes must hold only 0/1 or -1/+1, found values {shown}; {expected}")


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between packed codes along the last axis, numpy broadcasting the rest
    (``hamming(q[:, None], db[None])`` is the ``(nq, nb)`` matrix), as int32."""
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.int32)


def int_column(values, n: int, name: str, default: int | None = None) -> np.ndarray:
    """Validate a length-``n`` integer column (or fill it with ``default``) as int64."""
    if values is None:
        return np.full(n, default, dtype=np.int64)
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)
