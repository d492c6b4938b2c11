"""Label filters: kNN restricted to the rows of some classes, exactly.

The filter is applied inside the search, never to a result list afterwards, so a query
gets its ``k`` nearest neighbours among the allowed rows however rare they are. A flat
index searches with a Faiss ``IDSelectorBitmap``; other kinds (whose Faiss binary search
takes no selector) search the allowed rows' codes exhaustively, which is exact too.
"""

from __future__ import annotations

from typing import Iterable

import faiss
import numpy as np

from .codes import MISSING_DISTANCE
from .rows import stored_codes
from .spec import IndexSpec


def label_mask(labels: "Iterable[int | str]", stored: np.ndarray, class_names: list[str]) -> np.ndarray:
    """Boolean row mask of the rows whose label is in ``labels`` (ints, or class names)."""
    if isinstance(labels, (str, int, np.integer)):
        labels = [labels]
    wanted = []
    for label in labels:
        if isinstance(label, str):
            if label not in class_names:
                raise ValueError(f"unknown class {label!r}; the index has {class_names}")
            wanted.append(class_names.index(label))
        elif isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            wanted.append(int(label))
        else:
            raise ValueError(f"labels must be ints or class names, got {label!r}")
    if not wanted:
        raise ValueError("labels: give at least one label (or labels=None for no filter)")
    return np.isin(stored, np.array(wanted, dtype=np.int64))


def masked_knn(index: faiss.IndexBinary, spec: IndexSpec, queries: np.ndarray, k: int,
               mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming kNN of packed ``queries`` among the rows where ``mask`` holds:
    ``(D, rows)``, padded with ``MISSING_DISTANCE`` / ``-1``."""
    allowed = int(mask.sum())
    if allowed == 0 or len(queries) == 0:
        return (np.full((len(queries), k), MISSING_DISTANCE, dtype=np.int32),
                np.full((len(queries), k), -1, dtype=np.int64))
    if spec.kind == "flat":
        bitmap = np.packbits(mask, bitorder="little")  # must outlive the search
        params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap)))
        D, rows = index.search(queries, k, params=params)
    else:
        allowed_rows = np.flatnonzero(mask)
        subset = faiss.IndexBinaryFlat(index.d)
        subset.add(stored_codes(index, spec)[allowed_rows])
        D, sub = subset.search(queries, k)
        rows = np.where(sub >= 0, allowed_rows[np.maximum(sub, 0)], -1)
    D = np.where(rows >= 0, D, MISSING_DISTANCE).astype(np.int32)
    return D, rows
