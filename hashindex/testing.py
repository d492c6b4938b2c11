"""Brute-force oracles and comparison helpers shared by the tests and benchmarks.

Everything here is deliberately simple numpy so it can serve as the reference
that the Faiss-backed code is checked against.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from .codes import MISSING_DISTANCE, hamming


def hamming_matrix(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Exact ``(nq, nb)`` Hamming distances between packed uint8 codes (XOR + popcount)."""
    return hamming(queries[:, None, :], database[None, :, :])


def brute_force_knn(queries: np.ndarray, database: np.ndarray, k: int):
    """Exact Hamming kNN; ties broken by database position; pads with -1 / MISSING_DISTANCE."""
    dist = hamming_matrix(queries, database)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    D = np.full((len(queries), k), MISSING_DISTANCE, dtype=np.int32)
    I = np.full((len(queries), k), -1, dtype=np.int64)
    kk = order.shape[1]
    D[:, :kk] = np.take_along_axis(dist, order, axis=1)
    I[:, :kk] = order
    return D, I


def tie_heavy_codes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """Packed codes drawn from few distinct patterns, so Hamming distances tie massively."""
    patterns = rng.integers(0, 256, size=(max(2, n // 20), bits // 8), dtype=np.uint8)
    return patterns[rng.integers(0, len(patterns), size=n)].copy()


def assert_same_knn(D_ref, I_ref, D, I, *, database=None, queries=None) -> None:
    """Assert two kNN results agree up to the order of tied neighbours.

    Distances must be identical row by row. Ids are compared per distance value:
    for every distance strictly below the row's last (k-th) distance the sets of
    ids must be equal, and at the boundary distance any ids may be chosen among
    the ties. With ``database`` and ``queries`` given, every returned id is also
    checked to really lie at its stated Hamming distance.
    """
    D_ref, I_ref, D, I = (np.asarray(a) for a in (D_ref, I_ref, D, I))
    np.testing.assert_array_equal(D, D_ref, err_msg="kNN distances differ")
    for row in range(len(D)):
        valid = I[row] >= 0
        ids = I[row][valid]
        assert len(set(ids.tolist())) == len(ids), f"row {row}: duplicate ids {ids}"
        np.testing.assert_array_equal(valid, I_ref[row] >= 0, err_msg=f"row {row}: -1 padding differs")
        if not valid.any():
            continue
        last = D[row][valid][-1]
        for dist in np.unique(D[row][valid]):
            if dist == last:
                continue
            got = set(I[row][(D[row] == dist) & valid].tolist())
            want = set(I_ref[row][(D_ref[row] == dist) & (I_ref[row] >= 0)].tolist())
            assert got == want, f"row {row}: ids at distance {dist} differ: {sorted(got)} != {sorted(want)}"
        if database is not None and queries is not None:
            true = hamming_matrix(queries[row : row + 1], database[ids])[0]
            np.testing.assert_array_equal(true, D[row][valid], err_msg=f"row {row}: ids not at stated distances")


def start_in_thread(call: Callable[[], object]) -> tuple[threading.Thread, dict]:
    """Start ``call()`` in a thread (for tests that kill something while it runs). The returned
    dict receives ``"result"``, or ``"error"`` (the exception), when the call ends."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def load_while_saving(script: str, directory, seconds: float, check: Callable) -> tuple[int, int]:
    """Run ``script`` (Python source, given ``directory`` and ``seconds`` as arguments) in another
    process: it saves an index into ``directory``, prints ``ready``, saves again and again for
    ``seconds`` and prints how many saves it made. Meanwhile load the index over and over, calling
    ``check(index)`` on each; returns ``(loads, saves)``. The script's failure fails the caller."""
    import os
    import subprocess
    import sys

    from .index import HashIndex

    saver = subprocess.Popen([sys.executable, "-c", script, str(directory), str(seconds)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert saver.stdout.readline().strip() == "ready", saver.stderr.read()
    loads = 0
    while saver.poll() is None:
        check(HashIndex.load(directory))
        loads += 1
    out, err = saver.communicate()
    assert saver.returncode == 0, err
    return loads, int(out.split()[-1])
