"""The one timing helper and environment record every hashindex benchmark uses.

:func:`time_single` times one-query calls of several systems in alternation (so background
load hits them alike); :func:`environment` records the machine, load and versions beside
the figures.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

#: ``(queries, k) -> anything``: one search call of a system under test.
SearchCall = Callable[[np.ndarray, int], object]
MIN_SAMPLES = 5


def environment(**extra) -> dict:
    """Machine, load and library versions, for the results file; ``extra`` fields are added
    (e.g. ``torch_threads``). Versions of torch and Ray are recorded when the caller has them loaded."""
    import h5py

    from . import __version__

    versions = {"python": sys.version.split()[0], "numpy": np.__version__, "faiss": faiss.__version__,
                "h5py": h5py.__version__, "hashindex": __version__}
    try:
        import usearch

        versions["usearch"] = usearch.__version__
    except ImportError:
        versions["usearch"] = None
    for name in ("torch", "ray"):  # never imported here: the core stays torch-free
        if sys.modules.get(name) is not None:
            versions[name] = getattr(sys.modules[name], "__version__", None)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "faiss_compile_options": faiss.get_compile_options(),
        "memory_bytes": memory,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": commit,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }


@dataclass
class Latency:
    """Single-query latency statistics, milliseconds."""

    median_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    samples: int

    @classmethod
    def from_seconds(cls, samples: list[float]) -> "Latency":
        ms = np.asarray(samples) * 1e3
        return cls(float(np.median(ms)), float(np.percentile(ms, 99)), float(ms.mean()), float(ms.min()), len(ms))


def alternate(calls: dict[str, Callable[[int], object]], *, min_repeats: int = 1, max_repeats: int | None = None,
              budget_s: float = math.inf, min_time_s: float = math.inf, order: str = "fixed",
              seed: int = 0) -> dict[str, list[float]]:
    """Wall times (s) of ``calls[name](i)`` for rounds ``i = 0, 1, ...``, every system once per
    round, so that load from other processes hits them alike.

    ``order``: ``"fixed"``, ``"rotate"`` (each system goes first in turn) or ``"shuffle"``.
    After ``min_repeats`` rounds, stops once ``budget_s`` has passed or every system has run
    ``min_time_s`` in total; never runs more than ``max_repeats`` rounds.
    """
    if max_repeats is None and budget_s == math.inf and min_time_s == math.inf:
        raise ValueError("alternate needs max_repeats, budget_s or min_time_s to stop")
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    rng = np.random.default_rng(seed)
    deadline = time.perf_counter() + budget_s
    i = 0
    while max_repeats is None or i < max_repeats:
        if order == "rotate":
            round_order = names[i % len(names):] + names[: i % len(names)]
        elif order == "shuffle":
            round_order = [names[j] for j in rng.permutation(len(names))]
        else:
            round_order = names
        for name in round_order:
            call = calls[name]
            t0 = time.perf_counter()
            call(i)
            times[name].append(time.perf_counter() - t0)
        i += 1
        if i >= min_repeats and (time.perf_counter() > deadline or min(map(sum, times.values())) >= min_time_s):
            break
    return times


def time_single(fns: dict[str, SearchCall], queries, k: int, budget_s: float, max_samples: int = 300,
                min_samples: int = MIN_SAMPLES) -> dict[str, Latency]:
    """One query per call, the systems in ``fns`` in alternation, until ``budget_s`` is spent
    (at most ``max_samples`` and at most ``len(queries)`` queries per system).

    System ``j`` starts its query sequence ``j / len(fns)`` of the way into ``queries``: had
    two systems searched the same query back to back, the second would find the data the
    first just touched in its caches (that made raw Faiss look 6 µs faster per IVF query).
    """
    for fn in fns.values():
        fn(queries[0:1], k)  # warm-up
    n = len(queries)
    singles = [queries[row : row + 1] for row in range(n)]  # sliced before timing
    calls = {name: (lambda i, fn=fn, offset=j * n // len(fns): fn(singles[(i + offset) % n], k))
             for j, (name, fn) in enumerate(fns.items())}
    samples = alternate(calls, min_repeats=min_samples, max_repeats=min(max_samples, n), budget_s=budget_s)
    return {name: Latency.from_seconds(s) for name, s in samples.items()}


def timed(build: Callable[[], object]) -> tuple[object, float]:
    """``build()`` and the seconds it took."""
    t0 = time.perf_counter()
    out = build()
    return out, time.perf_counter() - t0
