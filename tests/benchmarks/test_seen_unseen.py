"""Smoke run of the seen / unseen benchmark on a few sklearn digits."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "seen_unseen.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("seen_unseen", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_split_is_fixed_and_trains_on_seen_classes_only(bench):
    labels = np.repeat(np.arange(10), 12)
    a = bench.split_seen_unseen(labels, queries_per_class=2, seed=0)
    b = bench.split_seen_unseen(labels, queries_per_class=2, seed=0)
    for part in ("train", "database", "queries"):
        np.testing.assert_array_equal(a[part], b[part])
    assert len(a["queries"]) == 20 and len(a["database"]) == 100
    assert not set(a["queries"]) & set(a["database"])
    assert set(labels[a["train"]]) == set(bench.SEEN)
    assert set(a["train"]) <= set(a["database"]) and len(a["train"]) == 70
    with pytest.raises(ValueError, match="class 0 has 12 images, need more than 12 queries"):
        bench.split_seen_unseen(labels, queries_per_class=12)


def test_tiny_run_writes_json_and_table(bench, tmp_path, monkeypatch):
    # Tiny: 12 digits per class, 3 queries each, every method, 3 epochs (one per bilinear stage).
    monkeypatch.setitem(bench.DATASETS, "digits", bench.DatasetSetup("digits", queries_per_class=3, epochs=3,
                                                                      batch_size=16))
    real_run_dataset = bench.run_dataset

    def tiny_run_dataset(name, methods, **kwargs):
        return real_run_dataset(name, methods, limit_per_class=12, work_dir=tmp_path, **kwargs)

    monkeypatch.setattr(bench, "run_dataset", tiny_run_dataset)
    threads = torch.get_num_threads()
    try:
        payload = bench.main(["--dataset", "digits", "--bits", "16", "--threads", "1", "--out", str(tmp_path / "out")])
    finally:
        torch.set_num_threads(threads)  # the script sets the process-wide thread count
    written = json.loads((tmp_path / "out" / "seen_unseen.json").read_text())
    assert written["results"][0]["dataset"] == "digits"
    rows = written["results"][0]["rows"]
    assert [r["method"] for r in rows] == [m.label for m in bench.METHODS.values()]
    for row in rows:
        assert row["seen"]["queries"] == 21 and row["unseen"]["queries"] == 9
        assert row["seen"]["database"] == 90
        for part in ("seen", "unseen"):
            for metric in ("mAP@1000", "P@8", "vote_accuracy", "rerank_vote_accuracy"):
                assert 0.0 <= row[part][metric] <= 1.0
    table = (tmp_path / "out" / "seen_unseen.md").read_text()
    assert table.count("| digits |") == len(rows)
    assert payload["total_s"] > 0


def test_hashnet_fine_tunes_the_trained_dlbhc_trunk(bench, tmp_path, monkeypatch):
    calls = []
    real_train_encoder = bench.train_encoder

    def spy(image_dir, out, *, method, init_trunk_from=None, **kwargs):
        # HashNet starts from the DLBHC model trained just before it.
        assert init_trunk_from == (calls[-1][1] if method == "hashnet" else None)
        calls.append((method, out, kwargs["config"].epochs))
        return real_train_encoder(image_dir, out, method=method, init_trunk_from=init_trunk_from, **kwargs)

    monkeypatch.setattr(bench, "train_encoder", spy)
    result = bench.run_dataset("digits", ["hashnet"], bits=16, epochs=5, queries_per_class=3, limit_per_class=12,
                               work_dir=tmp_path)
    # Asked for HashNet alone: DLBHC's trunk is trained first (5 epochs), then HashNet for 40 % of them.
    assert [(m, e) for m, _, e in calls] == [("dlbhc", 5), ("hashnet", 2)]
    assert [r["init_trunk_from"] for r in result["rows"]] == ["dlbhc"]
