"""Search engines: exact Hamming kNN over a flat set of packed codes, built by name.

An engine holds packed uint8 codes (``fit`` replaces them, ``add`` appends) and answers
``search(queries, k) -> (D, I)``: int32 distances and int64 row numbers, ``(nq, k)``, nearest
first, ties ordered by row, missing neighbours as row ``-1`` at :data:`~hashindex.MISSING_DISTANCE`
(exactly what a CPU ``IndexBinaryFlat`` returns). Engines differ only in speed.

Built in: ``"faiss-cpu"`` (``IndexBinaryFlat``) and ``"faiss-gpu"`` (a ``GpuIndexBinaryFlat``
copy, see :mod:`hashindex.gpu`). Other packages add engines through the entry-point group
``hashindex.engines`` (the ``hashtorch`` package of this distribution declares ``"torch"``),
so the core never imports them. ``create_engine(name)`` raises with the known names when
``name`` is unknown, and with the reason when the engine cannot run here.
"""

from __future__ import annotations

import fnmatch
import logging
from importlib import metadata
from typing import Callable, Protocol, runtime_checkable

import faiss
import numpy as np

from .codes import MISSING_DISTANCE
from .gpu import DevicePlacement, gpu_unavailable_reason, search_cpu

ENTRY_POINT_GROUP = "hashindex.engines"

logger = logging.getLogger("hashindex.engines")


@runtime_checkable
class Engine(Protocol):
    """What :func:`create_engine` returns. ``device`` is ``"cpu"`` or ``"gpu"``: where the codes live."""

    name: str
    device: str

    @property
    def ntotal(self) -> int: ...

    def fit(self, packed: np.ndarray) -> None: ...

    def add(self, packed: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class EngineUnavailable(RuntimeError):
    """The engine exists but cannot run here (no GPU, missing package); the message says why."""


EngineFactory = Callable[..., Engine]

_FACTORIES: dict[str, EngineFactory] = {}
_discovered = False


def register_engine(name: str, factory: EngineFactory) -> EngineFactory:
    """Make ``create_engine(name)`` call ``factory(**kwargs)``.

    ``factory`` may have a ``unavailable_reason()`` callable returning why it cannot run here
    (``None`` when it can). Registering the same factory twice is a no-op (a plug-in can be
    both imported and discovered); another factory under a taken name raises.
    """
    known = _FACTORIES.get(name)
    if known is not None and known is not factory:
        raise ValueError(f"engine {name!r} is already registered (by {known!r})")
    _FACTORIES[name] = factory
    return factory


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _discover() -> None:
    """Register the installed plug-ins once; a plug-in that fails to load is logged, not fatal."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for point in _entry_points():
        try:
            register_engine(point.name, point.load())
        except Exception as exc:  # noqa: BLE001 - one broken plug-in must not hide the others
            logger.warning("engine plug-in %r (%s) failed to load: %s", point.name, point.value, exc)


def list_engines(pattern: str = "*") -> list[str]:
    """Registered engine names matching a shell-style ``pattern``, sorted (runnable here or not)."""
    _discover()
    return sorted(fnmatch.filter(_FACTORIES, pattern))


def engine_unavailable_reason(name: str) -> str | None:
    """Why engine ``name`` cannot run here, or ``None`` if it can."""
    factory = _factory(name)
    reason = getattr(factory, "unavailable_reason", None)
    return reason() if reason is not None else None


def check_engine(name: str) -> None:
    """Raise ``ValueError`` if no engine is called ``name``, :class:`EngineUnavailable` if it cannot run here."""
    reason = engine_unavailable_reason(name)
    if reason is not None:
        raise EngineUnavailable(f"engine {name!r} cannot run here: {reason}")


def create_engine(name: str, **kwargs) -> Engine:
    """Build an empty engine: ``create_engine("torch", device="cpu")``; then ``fit`` and ``search``."""
    check_engine(name)
    return _factory(name)(**kwargs)


def _factory(name: str) -> EngineFactory:
    _discover()
    try:
        return _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; available: {', '.join(sorted(_FACTORIES))}") from None


def empty_knn(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The result of a search with no neighbour at all: distances MISSING_DISTANCE, rows -1."""
    return np.full((nq, k), MISSING_DISTANCE, dtype=np.int32), np.full((nq, k), -1, dtype=np.int64)


def check_codes(codes: np.ndarray, code_size: int | None, name: str = "codes") -> np.ndarray:
    """Packed uint8 ``(n, bytes)`` codes of ``code_size`` bytes (any width when ``None``), C-contiguous."""
    codes = np.ascontiguousarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise ValueError(f"{name}: expected packed uint8 (n, bytes), got {codes.dtype} {codes.shape}")
    if code_size is not None and codes.shape[1] != code_size:
        raise ValueError(f"{name} are {codes.shape[1]}-byte codes, the engine holds {code_size}-byte codes")
    return codes


def check_k(k: int) -> int:
    """``k`` as an int, or ``ValueError`` unless it is a positive integer (bools refused)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


class FaissCpuEngine:
    """Exact kNN by Faiss's CPU ``IndexBinaryFlat``.

    ``FaissCpuEngine.over(index)`` searches an existing flat index that its owner fills (as
    :class:`~hashindex.HashIndex` does), so nothing is copied; ``fit`` / ``add`` then refuse.
    """

    name = "faiss-cpu"
    device = "cpu"

    def __init__(self) -> None:
        self._index: faiss.IndexBinaryFlat | None = None
        self._shared = False

    @classmethod
    def over(cls, index: faiss.IndexBinaryFlat) -> "FaissCpuEngine":
        engine = cls()
        engine._index, engine._shared = index, True
        return engine

    @property
    def ntotal(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    def fit(self, packed: np.ndarray) -> None:
        self._check_owned()
        self._index = None
        self.add(packed)

    def add(self, packed: np.ndarray) -> None:
        self._check_owned()
        packed = check_codes(packed, None if self._index is None else self._index.code_size)
        if self._index is None:
            self._index = faiss.IndexBinaryFlat(packed.shape[1] * 8)
        self._index.add(packed)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = check_k(k)
        queries = check_codes(queries, None if self._index is None else self._index.code_size, "queries")
        if self.ntotal == 0 or len(queries) == 0:
            return empty_knn(len(queries), k)
        return self._search(queries, k)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search_cpu(self._index, queries, k)

    def _check_owned(self) -> None:
        if self._shared:
            raise ValueError("this engine searches an index its owner fills; add codes to that index")


class FaissGpuEngine(FaissCpuEngine):
    """Exact kNN by Faiss's ``GpuIndexBinaryFlat``, through :class:`~hashindex.gpu.DevicePlacement`.

    The CPU flat index stays the source (the placement rebuilds its GPU copy after an add);
    a ``k`` above Faiss's GPU k-selection limit is searched on the CPU with a warning.
    """

    name = "faiss-gpu"
    device = "gpu"
    unavailable_reason = staticmethod(gpu_unavailable_reason)

    def __init__(self, gpu_id: int = 0) -> None:
        super().__init__()
        self.placement = DevicePlacement("gpu", gpu_id=gpu_id)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.placement.search(self._index, queries, k)


register_engine(FaissCpuEngine.name, FaissCpuEngine)
register_engine(FaissGpuEngine.name, FaissGpuEngine)
