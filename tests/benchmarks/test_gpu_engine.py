"""The GPU engine benchmark runs end to end on the CPU with a tiny database (no timing assertions)."""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]


def _bench_module():
    spec = importlib.util.spec_from_file_location("gpu_engine_bench", ROOT / "benchmarks" / "gpu_engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_writes_exactness_ratios_routing_and_a_plot(tmp_path):
    bench = _bench_module()
    out = tmp_path / "gpu_engine.json"
    bench.main([str(out), "--sizes", "1e4", "--device", "cpu", "--queries", "1,16,100", "--ks", "8,1000",
                "--min-time-s", "0", "--check", "20"])
    result = json.loads(out.read_text())
    (entry,) = result["sizes"]
    assert entry["ntotal"] == 10_000 and "1000 random centre codes" in entry["codes"]
    for k in ("8", "1000"):
        exact = entry["exact"][k]
        assert exact["torch"] == {"distances_equal": True, "ids_equal": True}
        assert exact["routed"] == {"distances_equal": True, "ids_equal": True}
        timings = entry["ms_per_call"][k]
        assert set(timings["torch"]) == {"1", "16", "100"}
        assert all(t["median_ms"] > 0 for t in timings["torch"].values())
        assert timings["torch"]["100"]["plan"]["path"] == "matmul" and timings["torch"]["1"]["plan"]["path"] == "xor"
        assert set(entry["ratios"][k]["16"]) >= {"faiss-cpu_over_torch", "routed_over_torch"}
    if "faiss-gpu" not in entry["build_s"]:  # no GPU here: the raw Faiss GPU column is absent, not faked
        assert result["environment"]["faiss_gpu"] != "available"
    assert set(entry["routing"]["table"]) == {"1", "16", "256", "4096"}
    plot = Path(result["plot"])
    assert plot.stat().st_size > 0
    plot.unlink()
    bench.main([str(out), "--replot"])
    assert plot.stat().st_size > 0


def test_gpu_run_without_the_faiss_bundle_is_one_clear_error(tmp_path):
    if (ROOT / ".gpu" / "faissgpu.tar.xz").exists():
        pytest.skip("the bundle is present here")
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_run.sh")], capture_output=True, text=True,
                          env={"OUT": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "gpu_run.sh: .gpu/faissgpu.tar.xz not found; copy it from ../shared/gpu/ first"


def test_batches_after_a_call_slower_than_max_call_s_are_marked_skipped(tmp_path):
    out = tmp_path / "slow.json"
    _bench_module().main([str(out), "--sizes", "2e3", "--device", "cpu", "--queries", "1,16", "--ks", "8",
                          "--max-call-s", "1e-9", "--check", "4"])
    timings = json.loads(out.read_text())["sizes"][0]["ms_per_call"]["8"]
    for name in ("torch", "faiss-cpu", "routed"):
        assert timings[name]["1"]["calls"] == 1 and timings[name]["1"]["includes_warmup"]
        assert timings[name]["16"]["skipped"].startswith("1 queries took")
