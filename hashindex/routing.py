"""Per-call routing: each search goes to the engine measured fastest for its batch size.

A :class:`Router` holds several :mod:`~hashindex.engines` over the same codes. At its first
search it times each engine on a few batch sizes (:data:`BATCH_SIZES`, queries drawn from the
database) and keeps a table *batch size -> engine*; a call with ``nq`` queries goes to the
engine of the largest calibrated size ``<= nq``. The table can be given instead
(``Router(engines, table={1: "torch", 256: "faiss-gpu"})``), and :attr:`Router.report` (what
was measured, what was chosen) is JSON-able: :class:`~hashindex.HashIndex` records it in
``index.metadata["routing"]``.

Calibration stays short: an engine is not timed at a batch size where its last call took more
than ``max_call_s``, or where the line through its last two timings predicts more (a CPU scan
grows linearly with the batch, a GPU call stays flat). Such sizes are absent from its timings.
It runs at the ``k`` of the first search.

:class:`FlatRouting` is what ``HashIndex`` holds: it routes the searches of a flat index when
``device`` is ``"gpu"`` / ``"auto"`` and an engine here runs on a GPU, or when ``engine=`` names
an engine (or a table); otherwise it answers ``None`` and the index searches as before.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

import faiss
import numpy as np

from .engines import (Engine, FaissCpuEngine, FaissGpuEngine, check_engine, create_engine,
                      engine_unavailable_reason, list_engines)

BATCH_SIZES = (1, 16, 256, 4096)
#: Engines that search the HashIndex's own Faiss index instead of holding a copy.
_SHARING = {FaissCpuEngine.name: FaissCpuEngine, FaissGpuEngine.name: FaissGpuEngine}

RowReader = Callable[[int, int], np.ndarray]


class Router:
    """Route each ``search(queries, k)`` to one of ``engines`` by the number of queries.

    The engines are filled lazily from the database given to :meth:`attach`: each holds its
    first ``ntotal`` rows (an engine that already does, like one sharing the caller's index,
    is left alone).
    """

    def __init__(self, engines: Mapping[str, Engine], *, table: Mapping[int, str] | None = None,
                 batch_sizes: tuple[int, ...] = BATCH_SIZES, max_call_s: float = 1.0, repeats: int = 2,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        if not engines:
            raise ValueError("a Router needs at least one engine")
        self.engines = dict(engines)
        self.batch_sizes = tuple(sorted(set(int(b) for b in batch_sizes)))
        self.max_call_s = float(max_call_s)
        self.repeats = int(repeats)
        self._timer = timer
        self.table: dict[int, str] | None = None
        self.report: dict = {}
        if table is not None:
            self._set_table(table)
            self.report = {"table": {str(b): n for b, n in self.table.items()}, "calibrated": False}
        self._ntotal = 0
        self._read: RowReader | None = None

    def _set_table(self, table: Mapping[int, str]) -> None:
        if not table:
            raise ValueError("routing table is empty")
        unknown = sorted(set(table.values()) - set(self.engines))
        if unknown:
            raise ValueError(f"routing table names engines {unknown} that are not among {sorted(self.engines)}")
        self.table = {int(b): name for b, name in sorted(table.items())}

    def attach(self, ntotal: int, read: RowReader) -> None:
        """The database: ``ntotal`` rows, ``read(lo, hi)`` returns rows ``lo:hi`` as packed uint8 (a copy)."""
        self._ntotal, self._read = int(ntotal), read

    def _ready(self, name: str) -> Engine:
        engine = self.engines[name]
        have = engine.ntotal
        if have > self._ntotal:
            engine.fit(self._read(0, self._ntotal))
        elif have < self._ntotal:
            engine.add(self._read(have, self._ntotal))
        return engine

    def choose(self, nq: int) -> str:
        """The engine for a call with ``nq`` queries (calibrate or give a table first)."""
        if self.table is None:
            raise RuntimeError("the router is not calibrated yet")
        sizes = [b for b in self.table if b <= nq]
        return self.table[sizes[-1] if sizes else next(iter(self.table))]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """kNN of ``queries`` by the engine chosen for their number (calibrating at the first call)."""
        if self.table is None:
            self.calibrate(k)
        return self._ready(self.choose(len(queries))).search(queries, k)

    def calibrate(self, k: int) -> dict:
        """Time every engine at each batch size, keep the fastest per size; returns :attr:`report`."""
        if self._read is None or self._ntotal == 0:
            raise RuntimeError("calibration needs a database: call attach() with rows first")
        largest = self.batch_sizes[-1]
        rows = self._read(0, min(self._ntotal, largest))
        sample = rows[np.arange(largest) % len(rows)]  # database rows as queries, repeated if few
        ms: dict[str, dict[str, float]] = {}
        for name in self.engines:
            engine = self._ready(name)
            engine.search(sample[:1], k)  # warm-up: device copies, kernels, caches
            ms[name] = {}
            timed: list[tuple[int, float]] = []
            for size in self.batch_sizes:
                if _extrapolate(timed, size) > self.max_call_s:
                    break
                best = min(self._time(engine, sample[:size], k) for _ in range(self.repeats))
                ms[name][str(size)] = round(best * 1e3, 4)
                timed.append((size, best))
        table, winner = {}, None
        for size in self.batch_sizes:
            timed = {name: t[str(size)] for name, t in ms.items() if str(size) in t}
            winner = min(timed, key=timed.get) if timed else winner
            table[size] = winner
        self._set_table(table)
        self.report = {"calibrated": True, "k": int(k), "ntotal": self._ntotal, "ms_per_call": ms,
                       "table": {str(b): n for b, n in self.table.items()}}
        return self.report

    def _time(self, engine: Engine, queries: np.ndarray, k: int) -> float:
        start = self._timer()
        engine.search(queries, k)
        return self._timer() - start


def _extrapolate(timed: list[tuple[int, float]], size: int) -> float:
    """Seconds a call of ``size`` queries should take, on the line through the last two timings
    (0 with fewer than two; the last timing itself when it already took longer)."""
    if len(timed) < 2:
        return timed[-1][1] if timed else 0.0
    (s0, t0), (s1, t1) = timed[-2:]
    return max(t1, t1 + (t1 - t0) * (size - s1) / (s1 - s0))


def _flat_rows(index: faiss.IndexBinaryFlat) -> RowReader:
    """Copies of a flat index's stored rows (the view is dropped at once: an add may move them)."""
    size = index.code_size

    def read(lo: int, hi: int) -> np.ndarray:
        if hi <= lo:
            return np.empty((0, size), dtype=np.uint8)
        view = faiss.rev_swig_ptr(index.xb.data(), hi * size)
        return np.array(view[lo * size :]).reshape(hi - lo, size)

    return read


class FlatRouting:
    """A HashIndex's routing: ``search`` answers ``None`` for searches it does not route.

    ``engine``: ``None`` (route between Faiss CPU and every GPU engine available when
    ``device`` is "gpu" / "auto"), an engine name (always that engine), or a table
    ``{batch_size: name}``.
    """

    def __init__(self, device: str = "cpu", engine: "str | Mapping[int, str] | None" = None) -> None:
        self.device = device
        if isinstance(engine, str):
            engine = {1: engine}
        self.fixed = None if engine is None else {int(b): n for b, n in dict(engine).items()}
        for name in (self.fixed or {}).values():
            check_engine(name)
        self._off = self.fixed is None and device == "cpu"  # the default: nothing to route
        self._index = None
        self._router: Router | None = None

    @property
    def report(self) -> dict:
        return self._router.report if self._router is not None else {}

    def search(self, index: faiss.IndexBinary, packed: np.ndarray, k: int):
        """``(D, rows)`` of ``packed`` in ``index`` when routed, else ``None``."""
        if self._off or not isinstance(index, faiss.IndexBinaryFlat):
            return None
        if self._index is not index:
            self._index, self._router = index, self._build(index)
        if self._router is None:
            return None
        self._router.attach(index.ntotal, _flat_rows(index))
        return self._router.search(packed, k)

    def invalidate(self) -> None:
        """Forget the engines' copies: the index was edited in a way its ``ntotal`` may not show."""
        self._index, self._router = None, None

    def _build(self, index: faiss.IndexBinaryFlat) -> Router | None:
        if self.fixed is not None:
            names = sorted(set(self.fixed.values()))
            return Router({n: self._engine(n, index) for n in names}, table=self.fixed)
        if self.device == "cpu":
            return None
        engines = {FaissCpuEngine.name: FaissCpuEngine.over(index)}
        for name in list_engines():
            if name not in engines and engine_unavailable_reason(name) is None:
                engine = self._engine(name, index)
                if engine.device == "gpu":
                    engines[name] = engine
        return Router(engines) if len(engines) > 1 else None

    @staticmethod
    def _engine(name: str, index: faiss.IndexBinaryFlat) -> Engine:
        return _SHARING[name].over(index) if name in _SHARING else create_engine(name)
