"""Export a :class:`HashIndex` for other tools.

- ``ann-benchmarks``: one HDF5 file as ann-benchmarks defines a Hamming dataset: ``train`` and
  ``test`` bool arrays ``(n, bits)``, ``neighbors`` (int32, the ``count`` exact nearest train rows
  of each test row) and ``distances`` (float32, the number of differing bits), attributes
  ``distance="hamming"``, ``point_type="bit"``, ``type="dense"``, ``dimension=bits``. The test rows
  are a seeded sample of the index's codes, held out of ``train``.
- ``faiss``: a directory with the raw Faiss binary index (``index.faiss``, rows as Faiss ids,
  codes zero-padded to ``faiss_bits``) and ``rows.csv`` (row, id, label, class name).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import faiss
import h5py
import numpy as np

from .codes import unpack_codes
from .durable import TMP_SUFFIX, replace_durably
from .index import HashIndex
from .rows import stored_codes

FORMATS = ("ann-benchmarks", "faiss")


def export_ann_benchmarks(index: HashIndex, path: "str | os.PathLike", *, queries: int = 1000, count: int = 100,
                          seed: int = 0) -> Path:
    """Write the index's codes as an ann-benchmarks Hamming dataset (see the module docstring)."""
    codes = stored_codes(index.faiss_index, index.spec)[:, : index.bits // 8]
    if not 0 < queries < len(codes):
        raise ValueError(f"queries must be between 1 and {len(codes) - 1} (the index holds {len(codes)} codes)")
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    test_rows = np.sort(np.random.default_rng(seed).choice(len(codes), queries, replace=False))
    train = np.delete(codes, test_rows, axis=0)
    test = codes[test_rows]
    count = min(count, len(train))
    exact = faiss.IndexBinaryFlat(index.bits)
    exact.add(train)
    D, I = exact.search(test, count)
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"type": "dense", "distance": "hamming", "point_type": "bit", "dimension": index.bits})
        f.create_dataset("train", data=unpack_codes(train, index.bits).astype(bool))
        f.create_dataset("test", data=unpack_codes(test, index.bits).astype(bool))
        f.create_dataset("neighbors", data=I.astype(np.int32))
        f.create_dataset("distances", data=D.astype(np.float32))
    replace_durably(tmp, path)
    return path


def export_faiss(index: HashIndex, directory: "str | os.PathLike") -> Path:
    """Write the raw Faiss index and its row table (see the module docstring) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / ("index.faiss" + TMP_SUFFIX)
    faiss.write_index_binary(index.faiss_index, str(tmp))
    replace_durably(tmp, directory / "index.faiss")
    names = index.class_names
    tmp = directory / ("rows.csv" + TMP_SUFFIX)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "id", "label", "class"])
        for row, (i, label) in enumerate(zip(index.ids.tolist(), index.labels.tolist())):
            writer.writerow([row, i, label, names[label] if 0 <= label < len(names) else ""])
    replace_durably(tmp, directory / "rows.csv")
    return directory
