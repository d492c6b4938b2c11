import time

import numpy as np
import pytest

from hashindex.timing import alternate, environment, time_single


def test_alternate_runs_every_system_once_per_round_in_the_requested_order():
    log = []
    calls = {name: (lambda i, name=name: log.append((i, name))) for name in "abc"}
    times = alternate(calls, max_repeats=3, order="rotate")
    assert log == [(0, "a"), (0, "b"), (0, "c"), (1, "b"), (1, "c"), (1, "a"), (2, "c"), (2, "a"), (2, "b")]
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    log.clear()
    alternate(calls, max_repeats=4, order="shuffle", seed=1)
    rounds = [sorted(name for i, name in log if i == r) for r in range(4)]
    assert rounds == [["a", "b", "c"]] * 4


def test_alternate_stops_once_every_system_has_run_min_time():
    calls = {"slow": lambda i: time.sleep(0.004), "fast": lambda i: time.sleep(0.002)}
    times = alternate(calls, min_repeats=2, min_time_s=0.02)
    assert sum(times["fast"]) >= 0.02 and len(times["fast"]) == len(times["slow"]) >= 2
    assert len(times["fast"]) <= 10  # 2 ms sleeps reach 20 ms in at most 10 rounds


def test_alternate_needs_a_stopping_rule():
    with pytest.raises(ValueError, match="to stop"):
        alternate({"a": lambda i: None})


def test_time_single_gives_each_system_its_own_stretch_of_queries():
    queries = np.arange(10, dtype=np.uint8).reshape(10, 1)
    seen = {"a": [], "b": []}
    fns = {name: (lambda q, k, name=name: seen[name].append(int(q[0, 0]))) for name in seen}
    latency = time_single(fns, queries, k=1, budget_s=60.0, max_samples=4)
    assert seen["a"] == [0, 0, 1, 2, 3] and seen["b"] == [0, 5, 6, 7, 8]  # warm-up on query 0 first
    assert latency["a"].samples == latency["b"].samples == 4
    assert 0 <= latency["a"].min_ms <= latency["a"].median_ms <= latency["a"].p99_ms


def test_environment_records_the_machine_and_extra_fields():
    env = environment(torch_threads=3)
    assert env["torch_threads"] == 3 and env["logical_cores"] >= 1
    assert env["versions"]["faiss"] and env["versions"]["numpy"] == np.__version__
