"""Smoke test of the latency benchmark on a tiny database: structure of the outputs and
correctness of every recall figure (no timing assertions)."""

import json

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from hashapp.bench import bench_command
from hashindex.bench import BenchConfig, NumpyHamming, distance_recall, run_latency_benchmark
from hashindex.codes import MISSING_DISTANCE
from hashindex.testing import brute_force_knn, hamming_matrix

SIZE = 20_000


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cfg = BenchConfig(sizes=(SIZE,), widths=(48, 64), ks=(8, 1000), queries=60, batch=60, budget_s=0.02,
                      max_single_queries=10, nprobes=(1, 4, 128), ef_searches=(16, 64), hnsw_max_size=SIZE,
                      nflips=(0, 1), feature_dim=16, shard_size=5000,
                      data=("uniform", "clustered", "clustered300-perturbed"), target_data="clustered300-perturbed")
    # One thread: on a busy machine two OpenMP threads stall at every parallel region.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        result = run_latency_benchmark(cfg, out_dir=out, name="smoke", log=lambda m: None)
    finally:
        faiss.omp_set_num_threads(threads)
    return result, out


def test_writes_json_markdown_and_plots(run):
    result, out = run
    assert set(result["files"]) == {"json", "markdown", "qps_vs_recall", "latency_vs_size", "widths"}
    for path in result["files"].values():
        assert (out / path.split("/")[-1]).stat().st_size > 0
    saved = json.loads((out / "smoke.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    md = (out / "smoke.md").read_text()
    assert "## Targets" in md and md.count("\n| ") > len(result["rows"])
    assert (out / "smoke_qps_recall.png").read_bytes()[:4] == b"\x89PNG"


def test_json_names_machine_generators_method_and_gpu(run):
    result, _ = run
    env = result["environment"]
    assert env["usable_cores"] >= 1 and env["cpu"]
    assert {"python", "numpy", "faiss", "usearch", "hashindex"} <= set(env["versions"])
    assert set(result["generators"]) == {"uniform", "clustered", "clustered300-perturbed"}
    assert "300 random centre codes" in result["generators"]["clustered300-perturbed"]
    assert "flipped with p=0.05" in result["generators"]["clustered300-perturbed"]
    assert "centre" in result["generators"]["clustered"] and "seed" in result["generators"]["uniform"]
    assert {"recall", "latency", "qps", "raw_faiss", "memory"} <= set(result["method"])
    if faiss.get_num_gpus() == 0:
        assert "no GPU" in result["gpu"]["skipped"]


def test_every_row_is_complete(run):
    result, _ = run
    kinds = {(r["system"], r["kind"]) for r in result["rows"] if r["section"] == "kinds"}
    assert kinds == {("hashindex", "flat"), ("faiss", "flat"), ("numpy", "exact"), ("usearch", "exact"),
                     ("hashindex", "IVF"), ("faiss", "IVF"), ("hashindex", "HNSW"), ("faiss", "HNSW"),
                     ("hashindex", "IVF_HNSW"), ("faiss", "IVF_HNSW"),
                     ("usearch", "HNSW"), ("hashindex", "MultiHash"), ("faiss", "MultiHash"), ("hashindex", "auto")}
    for r in result["rows"]:
        assert 0.0 <= r["recall"] <= 1.0
        assert r["qps"] > 0 and 1 <= r["batch_queries"] <= 60 and r["recall_queries"] == r["batch_queries"]
        lat = r["latency_ms"]
        assert 0 < lat["median_ms"] <= lat["p99_ms"] and lat["samples"] >= 5
        assert r["k"] in (8, 1000)
        assert r["memory_bytes"] is None or r["memory_bytes"] > 0
    for system in ("hashindex", "faiss", "numpy", "usearch"):
        assert {r["k"] for r in result["rows"] if r["system"] == system} == {8, 1000}


def test_exact_systems_have_full_recall(run):
    result, _ = run
    for r in result["rows"]:
        exact = r["kind"] in ("flat", "exact") or r["spec"] == "IVF128,nprobe=128"  # all lists
        if exact:
            assert r["recall"] == 1.0, (r["system"], r["spec"], r["k"])


def test_ivf_recall_never_drops_as_nprobe_grows(run):
    result, _ = run
    for data in ("uniform", "clustered"):
        for k in (8, 1000):
            rows = [r for r in result["rows"] if r["kind"] == "IVF" and r["system"] == "hashindex"
                    and r["data"] == data and r["k"] == k]
            rows.sort(key=lambda r: int(r["spec"].split("nprobe=")[1]))
            assert [int(r["spec"].split("nprobe=")[1]) for r in rows] == [1, 4, 128]
            # Recall is measured on each config's batch queries; compare on equal query counts only.
            if len({r["recall_queries"] for r in rows}) == 1:
                recalls = [r["recall"] for r in rows]
                assert recalls == sorted(recalls)


def test_padding_widths_and_sections(run):
    result, _ = run
    widths = {(r["bits"], r["system"]): r for r in result["rows"] if r["section"] == "widths"}
    assert widths[(48, "hashindex")]["faiss_bits"] == 64 and widths[(48, "faiss")]["faiss_bits"] == 48
    assert widths[(64, "hashindex")]["faiss_bits"] == 64
    assert {r["search"].split("(")[0] for r in result["rerank"]} >= {"search_rerank", "search"}
    shards = result["shards"]
    assert shards["size"] == SIZE and shards["content_checked"] and shards["load_s"] > 0


def test_auto_is_timed_beside_the_hand_set_config_it_is_compared_with(run):
    result, _ = run
    for r in (r for r in result["rows"] if r["kind"] == "auto"):
        hand_set = [h for h in result["rows"] if h["system"] == "faiss" and h["kind"] == "IVF"
                    and h["data"] == r["data"] and h["k"] == min(result["config"]["ks"])]
        reaching = [h for h in hand_set if h["recall"] >= result["config"]["auto_recall"]]
        if not reaching:
            assert r["paired_faiss"] is None
            continue
        fastest = min(reaching, key=lambda h: h["latency_ms"]["median_ms"])
        assert r["paired_faiss"]["spec"] == fastest["spec"] and r["paired_faiss"]["latency_ms"]["samples"] >= 5
    auto_targets = [t for t in result["targets"] if t["name"].startswith("auto vs")]
    assert auto_targets and all(t["measured"]["timing"].startswith("timed in") for t in auto_targets)


def test_the_hardest_data_gets_every_kind_and_the_targets(run):
    result, _ = run
    ivf_hnsw = {r["data"] for r in result["rows"] if r["kind"] == "IVF_HNSW"}
    assert ivf_hnsw == {"clustered300-perturbed"}
    assert {r["spec"].split(",")[0] for r in result["rows"] if r["kind"] == "IVF_HNSW"} == {"IVF512_HNSW32"}
    approx = next(t for t in result["targets"] if t["name"].startswith("best approximate"))
    assert approx["where"]["data"] == "clustered300-perturbed"
    for r in (r for r in result["rows"] if r["kind"] == "auto"):
        assert "not in the index" in r["auto"]["calibration"]
        assert r["auto"]["chosen"] == "flat" or r["auto"]["candidates"]


def test_other_processes_cpu_share_is_recorded(run):
    result, _ = run
    share = result["environment"].get("other_processes_cores")
    assert share is None or 0.0 <= share <= result["environment"]["logical_cores"]


def test_targets_are_ratios_with_a_verdict(run):
    result, _ = run
    names = " | ".join(t["name"] for t in result["targets"])
    for needle in ("raw Faiss flat", "numpy", "approximate", "auto vs best hand-set", "48-bit flat padded",
                   "coarse-then-fine", "shards", "usearch exact", "usearch HNSW",
                   "recall@8 on the run's out-of-index queries (clustered300-perturbed)"):
        assert needle in names
    for t in result["targets"]:
        assert t["met"] in (True, False, None)
        if t["ratio"] is not None:
            assert t["ratio"] > 0 and t["met"] == (t["ratio"] >= t["threshold"])
            assert (t["missed_by"] is None) == t["met"]


def test_distance_recall_matches_a_brute_force_count(rng):
    db = rng.integers(0, 256, (400, 8), dtype=np.uint8)
    q = rng.integers(0, 256, (30, 8), dtype=np.uint8)
    k = 10
    D_true, I_true = brute_force_knn(q, db, k)
    ids = I_true.copy()
    ids[:, 5:] = rng.integers(0, 400, (30, 5))     # some slots replaced by arbitrary rows
    ids[:3, -1] = -1                               # and a few missing neighbours
    dist = hamming_matrix(q, db)
    expected = 0
    for row in range(len(q)):
        seen = set()
        for i in ids[row]:
            if i >= 0 and i not in seen and dist[row, i] <= D_true[row, k - 1]:
                expected += 1
            seen.add(int(i))
    assert distance_recall(q, db, ids, D_true[:, k - 1]) == pytest.approx(expected / ids.size)
    assert distance_recall(q, db, I_true, D_true[:, k - 1]) == 1.0


def test_distance_recall_counts_ties_and_rejects_duplicates():
    db = np.array([[0b0000], [0b0001], [0b0010], [0b0111]], dtype=np.uint8)
    q = np.array([[0b0000]], dtype=np.uint8)
    kth = np.array([1])  # exact 2-NN distances: 0, 1 (rows 1 and 2 tie at 1)
    assert distance_recall(q, db, np.array([[0, 2]]), kth) == 1.0   # the other tied neighbour counts
    assert distance_recall(q, db, np.array([[1, 1]]), kth) == 0.5   # a repeated id counts once
    assert distance_recall(q, db, np.array([[0, 3]]), kth) == 0.5   # distance 3 > 1
    assert distance_recall(q, db, np.array([[0, -1]]), kth) == 0.5


def test_numpy_baseline_is_exact(rng):
    for nbytes in (4, 6, 8, 16):
        db = rng.integers(0, 256, (500, nbytes), dtype=np.uint8)
        q = rng.integers(0, 256, (7, nbytes), dtype=np.uint8)
        ids = NumpyHamming(db).search(q, 12)
        D_true = brute_force_knn(q, db, 12)[0]
        got = np.sort(hamming_matrix(q, db)[np.arange(7)[:, None], ids], axis=1)
        np.testing.assert_array_equal(got, D_true)
    assert MISSING_DISTANCE > 0


def test_cli_runs_a_minimal_benchmark(tmp_path):
    threads_before = faiss.omp_get_max_threads()
    result = CliRunner().invoke(bench_command, [
        "--sizes", "3e3", "--data", "uniform", "--ks", "8", "--queries", "20", "--budget", "0.01",
        "--widths", "", "--hnsw-max-size", "0", "--no-usearch", "--no-rerank", "--no-shards", "--threads", "1",
        "--out", str(tmp_path), "--name", "cli"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "cli.json").read_text())
    assert saved["config"]["sizes"] == [3000] and saved["rows"]
    assert saved["environment"]["faiss_threads"] == 1 and faiss.omp_get_max_threads() == threads_before
    assert "hashindex flat vs raw Faiss flat" in result.output


def test_saved_run_renders_again_without_measuring(run, tmp_path):
    from hashindex.bench import render_results

    result, out = run
    again = render_results(out / "smoke.json", tmp_path)
    assert again["targets"] == json.loads(json.dumps(result["targets"]))
    assert (tmp_path / "smoke.md").read_text() == (out / "smoke.md").read_text()
    assert (tmp_path / "smoke_widths.png").stat().st_size > 0
