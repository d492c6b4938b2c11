"""Row-level edits of a Faiss binary index: read its codes back by row, remove rows.

``HashIndex`` gives Faiss row numbers as ids, so a removal must leave the remaining rows
numbered ``0 .. n-1`` in their old order: ``IndexBinaryFlat`` compacts itself, an IVF
index keeps explicit ids in its inverted lists, renumbered here in place; kinds without
``remove_ids`` (HNSW) are rebuilt from their stored codes. Hash tables (``Hash``,
``MultiHash``) keep no codes that can be read back, so they support neither.
"""

from __future__ import annotations

import faiss
import numpy as np

from .spec import IndexSpec

#: Kinds whose stored codes can be read back (label filters and removal need them).
READABLE_KINDS = ("flat", "IVF", "IVF_HNSW", "IVF_HNSW_sampled", "HNSW")


def _check_readable(spec: IndexSpec, what: str) -> None:
    if spec.kind not in READABLE_KINDS:
        raise ValueError(f"spec {spec}: {what} needs an index whose codes can be read back "
                         f"({', '.join(READABLE_KINDS)}); rebuild the index from its shard store instead")


def stored_codes(index: faiss.IndexBinary, spec: IndexSpec) -> np.ndarray:
    """The ``(ntotal, code_size)`` uint8 codes of a Faiss binary index, row by row (a copy)."""
    _check_readable(spec, "reading codes back")
    n, width = index.ntotal, index.code_size
    if spec.kind == "flat":
        return faiss.vector_to_array(index.xb).reshape(n, width)
    if spec.kind == "HNSW":
        storage = faiss.downcast_IndexBinary(index.storage)
        return faiss.vector_to_array(storage.xb).reshape(n, width)
    out = np.empty((n, width), dtype=np.uint8)
    for rows, codes in _inverted_lists(index):
        out[rows] = codes
    return out


def codes_from_row(index: faiss.IndexBinary, spec: IndexSpec, start: int) -> np.ndarray:
    """The codes of rows ``start .. ntotal-1`` of a flat or IVF index, in row order (a copy)."""
    n, width = index.ntotal - start, index.code_size
    if spec.kind == "flat":
        return faiss.rev_swig_ptr(index.xb.data(), index.ntotal * width)[start * width :].reshape(n, width).copy()
    out = np.empty((n, width), dtype=np.uint8)
    for rows, codes in _inverted_lists(index):
        recent = rows >= start
        out[rows[recent] - start] = codes[recent]
    return out


def _inverted_lists(index: faiss.IndexBinary):
    """``(ids, codes)`` numpy views of each non-empty inverted list of an IVF index (writable)."""
    lists = index.invlists
    for list_no in range(index.nlist):
        size = lists.list_size(list_no)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(list_no), size)
            codes = faiss.rev_swig_ptr(lists.get_codes(list_no), size * index.code_size)
            yield ids, codes.reshape(size, index.code_size)


def remove_rows(index: faiss.IndexBinary, spec: IndexSpec, rows: np.ndarray) -> faiss.IndexBinary:
    """Remove ``rows`` (unique, valid row numbers) and renumber the others ``0 .. n-1`` in order.

    Returns the index holding the result: ``index`` itself, edited in place (flat, IVF), or a
    rebuilt one (HNSW).
    """
    _check_readable(spec, "removal")
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return index
    keep = np.ones(index.ntotal, dtype=bool)
    keep[rows] = False
    if spec.kind == "HNSW":
        rebuilt = spec.build(index.d)
        rebuilt.add(stored_codes(index, spec)[keep])
        return rebuilt
    index.remove_ids(faiss.IDSelectorBatch(rows))
    if spec.kind != "flat":  # IVF lists keep their old row numbers: shift them down
        new_row = np.cumsum(keep) - 1
        for ids, _ in _inverted_lists(index):
            ids[:] = new_row[ids]
    return index
