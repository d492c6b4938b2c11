"""The spec sweep on a tiny database: builds are cached and reused, unbuilt specs are reported
missing, and every recall figure agrees with brute force (no timing assertions)."""

import json

import faiss
import pytest

from hashindex.bench import distance_recall
from hashindex.bench.plots import plot_sweep
from hashindex.bench.sweep import (BUILD_RECORD, SweepConfig, build_indexes, cache_folder, cache_name, grid,
                                   measure_sweep, sweep_markdown)
from hashindex.index import HashIndex
from hashindex.spec import parse_spec
from hashindex.testing import brute_force_knn


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    cfg = SweepConfig(data="clustered60-perturbed", size=6000, queries=40, specs=("IVF32", "IVF64_HNSW8_sampled"),
                      auto=(), grids={"nprobe": (1, 4, 32, 64), "quantizer_efSearch": (16, 64)}, budget_s=0.02, batch=40)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        built = build_indexes(cfg, cache, log=lambda m: None)
        again = build_indexes(cfg, cache, log=lambda m: None)
        unbuilt = SweepConfig(**{**cfg.__dict__, "specs": cfg.specs + ("HNSW8",)})
        result = measure_sweep(unbuilt, cache, log=lambda m: None)
    finally:
        faiss.omp_set_num_threads(threads)
    return cfg, cache, built, again, result


def test_builds_are_recorded_and_reused(swept):
    cfg, cache, built, again, _ = swept
    assert again == built  # the second call read the records, built nothing
    for spec in cfg.specs:
        folder = cache_folder(cfg, cache) / cache_name(spec)
        record = json.loads((folder / BUILD_RECORD).read_text())
        assert record["build_s"] > 0 and record["memory_bytes"] > cfg.size * 8
        assert record["build_cpu_s"] > 0 and record["threads"] == 1
        assert len(HashIndex.load(folder)) == cfg.size


def test_every_configuration_is_measured_and_recall_matches_brute_force(swept):
    cfg, cache, _, _, result = swept
    codes = cfg.codes()
    kth = brute_force_knn(codes.queries, codes.database, cfg.k)[0][:, cfg.k - 1]
    specs = [r["spec"] for r in result["rows"]]
    assert specs[0] == specs[-1] == "flat"  # timed before and after the sweep
    assert [s for s in specs if s.startswith("IVF32,")] == [f"IVF32,nprobe={p}" for p in (1, 4, 32)]  # <= nlist
    assert len([s for s in specs if "sampled" in s]) == 4 * 2  # nprobe x quantizer_efSearch
    assert result["missing"] == ["HNSW8"]
    for row in result["rows"]:
        index = HashIndex.load(cache_folder(cfg, cache) / cache_name(row["spec"].split(",")[0])) \
            if row["spec"] != "flat" else None
        if index is not None:
            index.set_search_params(**parse_spec(row["spec"]).params)
            expected = distance_recall(codes.queries, codes.database, index.search(codes.queries, cfg.k)[1], kth)
            assert row["recall"] == pytest.approx(expected)
        assert 0 <= row["recall"] <= 1 and row["latency_ms"]["samples"] >= 5
    assert all(r["recall"] == 1.0 for r in result["rows"] if r["spec"] in ("flat", "IVF32,nprobe=32"))


def test_summary_and_markdown_name_the_best_configuration(swept):
    *_, result = swept
    best = result["summary"]["best"]
    reaching = [r for r in result["rows"] if r["recall"] >= 0.95 and r["spec"] != "flat"]
    assert best["spec"] == min(reaching, key=lambda r: r["latency_ms"]["median_ms"])["spec"]
    paired = result["paired_best"]  # flat and the best timed in alternation
    assert paired["spec"] == best["spec"] and paired["flat"]["samples"] == paired["best"]["samples"] >= 5
    assert best["vs_flat_alternating"] == pytest.approx(paired["flat"]["median_ms"] / paired["best"]["median_ms"])
    assert best["vs_flat"] == pytest.approx(result["flat_ms"] / best["ms"])
    text = sweep_markdown(result)
    assert f"`{best['spec']}`" in text and "Not built: `HNSW8`" in text
    assert text.count("\n| ") == len(result["rows"]) + 1  # header + one line per configuration


def test_plot_is_drawn(swept, tmp_path):
    *_, result = swept
    files = plot_sweep(result, tmp_path, "sweep")
    assert (tmp_path / "sweep_latency_recall.png").stat().st_size > 0 and list(files) == ["latency_vs_recall"]


def test_grid_crosses_the_kinds_parameters_and_caps_nprobe_at_nlist():
    grids = {"nprobe": (1, 8, 64), "quantizer_efSearch": (16, 32), "efSearch": (10,)}
    assert grid(parse_spec("IVF16_HNSW8"), grids) == [
        {"nprobe": p, "quantizer_efSearch": e} for p in (1, 8) for e in (16, 32)]
    assert grid(parse_spec("IVF16"), {"quantizer_efSearch": (16,)}) == [{}]  # no nprobe grid: default
    assert grid(parse_spec("flat"), grids) == [{}]
    assert grid(parse_spec("HNSW8"), grids) == [{"efSearch": 10}]


def test_held_out_queries_reuse_the_builds_of_the_same_database(swept):
    cfg, cache, *_ = swept
    fresh = SweepConfig(**{**cfg.__dict__, "data": "clustered60", "grids": {"nprobe": (32,)}})
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        result = measure_sweep(fresh, cache, log=lambda m: None)
    finally:
        faiss.omp_set_num_threads(threads)
    assert result["missing"] == [] and "fresh codes" in result["generator"]
    assert [r["recall"] for r in result["rows"] if r["spec"] == "IVF32,nprobe=32"] == [1.0]  # every list
