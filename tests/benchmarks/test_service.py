"""Smoke run of the service benchmark on a small store: every figure present and consistent."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "service.py"


@pytest.mark.slow
def test_tiny_run_answers_every_request_and_writes_its_results(tmp_path):
    pytest.importorskip("uvicorn")
    spec = importlib.util.spec_from_file_location("bench_service", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    try:
        spec.loader.exec_module(bench)
        payload = bench.run(codes=4000, rounds=1, per_round=3, n_concurrent=12, clients=4, new_class_size=5,
                            threads=1, out_dir=tmp_path, echo=lambda line: None)
    finally:
        sys.modules.pop(spec.name, None)
    assert json.loads((tmp_path / "service.json").read_text())["parameters"]["codes"] == 4000
    assert "cold / warm p50" in (tmp_path / "service.md").read_text()
    speed, load = payload["warm_vs_cold"], payload["concurrent"]
    assert speed["warm_requests"] == 3 and speed["cold_calls"] == 1 and speed["ratio_cold_over_warm_p50"] > 1
    assert load["correct"] == load["requests"] == 12 and load["failed"] == load["wrong"] == 0
    for add in payload["add"]:
        assert add["ntotal_before"] == 4000 and add["added"] == 5 and add["new_classes"] == ["new"]
        assert add["add_index_files"] == ["delta.h5", "meta.json"]  # no full rewrite of the index
        assert add["delta_save_bytes"] < add["full_save_bytes"] / 3
        assert add["add_store_bytes"] < 64_000  # one shard of 5 records and the manifest
    assert "delta vs full" in (tmp_path / "service.md").read_text()
