"""The seen / unseen harness: partitions, splits, query conditions, metrics against a brute-force
numpy recomputation, and a tiny end-to-end run on sklearn digits."""

import importlib.util
import json
import sys
from collections import Counter
from dataclasses import replace
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


def test_report_and_tune_partitions(bench):
    report, tune = bench.draw_partitions("report"), bench.draw_partitions("tune")
    assert len(report) >= 5 and len(tune) >= 3
    assert report == bench.draw_partitions("report")  # fixed seeds
    for p in report + tune:
        assert len(p.unseen) == 3 and len(set(p.unseen)) == 3 and len(p.seen) == 7
        assert set(p.seen) | set(p.unseen) == set(range(10))
    assert set().union(*(p.unseen for p in report)) == set(range(10))  # every class unseen at least once
    assert not {p.unseen for p in report} & {p.unseen for p in tune}
    assert len({p.unseen for p in report + tune}) == len(report) + len(tune)
    assert len({p.seed for p in report + tune}) == len(report) + len(tune)
    with pytest.raises(ValueError, match="unknown partition set 'all'"):
        bench.draw_partitions("all")


def test_split_rows(bench):
    labels = np.repeat(np.arange(10), 30)
    budget = bench.Budget(train_images=50, database_per_class=10, queries_per_class=5, epochs=1)
    partition = bench.draw_partitions("report")[0]
    rows = bench.split_rows(labels, partition, budget)
    again = bench.split_rows(labels, partition, budget)
    for part in rows:
        np.testing.assert_array_equal(rows[part], again[part])
    assert np.bincount(labels[rows["queries"]]).tolist() == [5] * 10
    assert np.bincount(labels[rows["database"]]).tolist() == [10] * 10
    assert not set(rows["queries"]) & set(rows["database"])
    assert len(rows["train"]) == 50 and len(set(rows["train"])) == 50
    assert set(labels[rows["train"]]) <= set(partition.seen) and not set(rows["train"]) & set(rows["queries"])
    other = bench.split_rows(labels, bench.draw_partitions("report")[1], budget)
    assert not np.array_equal(rows["queries"], other["queries"])  # each partition draws its own images
    with pytest.raises(ValueError, match="class 0 has 30 images, the budget needs 31"):
        bench.split_rows(labels, partition, bench.Budget(10, 26, 5, 1))


def test_query_conditions(bench):
    rng = np.random.default_rng(0)
    image = np.arange(9, dtype=np.uint8).reshape(3, 3) + 1
    assert bench.shift_image(image, 1, -1).tolist() == [[0, 0, 0], [2, 3, 0], [5, 6, 0]]
    assert bench.shift_image(image, 0, 0).tolist() == image.tolist()
    images = rng.integers(0, 256, size=(40, 12, 12), dtype=np.uint8)
    np.testing.assert_array_equal(bench.perturb(images, "clean", rng), images)
    shifted = bench.perturb(images, "shifted", rng)
    moves = []
    for before, after in zip(images, shifted):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if np.array_equal(bench.shift_image(before, dy, dx), after)]
        assert found, "a shifted query is not its image moved by at most 2 px"
        moves.append(found[0])
    assert len(set(moves)) > 5
    grey = np.full((200, 10, 10), 128, dtype=np.uint8)
    noise = bench.perturb(grey, "noisy", rng).astype(float) - 128
    assert abs(noise.mean()) < 1 and noise.std() == pytest.approx(0.1 * 255, rel=0.05)
    both = bench.perturb(grey, "shifted+noisy", rng)
    assert both.dtype == np.uint8 and both.std() > 20
    with pytest.raises(ValueError, match="unknown condition 'blurred'"):
        bench.perturb(images, "blurred", rng)


def _hamming(a, b):
    bits_a = np.unpackbits(a, axis=1).astype(np.int64)
    bits_b = np.unpackbits(b, axis=1).astype(np.int64)
    return (bits_a[:, None, :] != bits_b[None, :, :]).sum(axis=2)


def _vote(labels):
    """Most frequent label; a tie goes to the tied label ranked first; -1 when empty."""
    if len(labels) == 0:
        return -1
    counts = Counter(labels)
    best = max(counts.values())
    return next(label for label in labels if counts[label] == best)


def _average_precision(ranked_labels, label):
    """Mean of precision@i over the positions i that hold ``label`` (0 if none)."""
    hits, precisions = 0, []
    for position, ranked in enumerate(ranked_labels, start=1):
        if ranked == label:
            hits += 1
            precisions.append(hits / position)
    return np.mean(precisions) if precisions else 0.0


def _reference(db, q, seen, k, map_k, candidates, radius):
    dist = _hamming(q["codes"], db["codes"])
    euclid = np.sqrt(((q["features"][:, None, :] - db["features"][None, :, :]) ** 2).sum(axis=2))
    out = {}
    for part in ("seen", "unseen"):
        rows = [i for i, label in enumerate(q["labels"]) if (label in seen) == (part == "seen")]
        aps, votes, reranked, radius_votes, reranked_aps = [], [], [], [], []
        for i in rows:
            ranking = sorted(range(len(db["labels"])), key=lambda j: (dist[i, j], j))
            aps.append(_average_precision([db["labels"][j] for j in ranking[:map_k]], q["labels"][i]))
            votes.append(_vote([db["labels"][j] for j in ranking[:k]]) == q["labels"][i])
            pool = sorted(ranking[:candidates], key=lambda j: euclid[i, j])
            reranked.append(_vote([db["labels"][j] for j in pool[:k]]) == q["labels"][i])
            reranked_aps.append(_average_precision([db["labels"][j] for j in pool[:map_k]], q["labels"][i]))
            ball = sorted((j for j in ranking if dist[i, j] <= radius), key=lambda j: euclid[i, j])
            radius_votes.append(_vote([db["labels"][j] for j in ball[:k]]) == q["labels"][i])
        out[f"{part}_mAP"], out[f"{part}_vote"] = np.mean(aps), np.mean(votes)
        out[f"{part}_vote_rerank"] = np.mean(reranked)
        if part == "unseen":
            out["unseen_vote_radius"] = np.mean(radius_votes)
            out["unseen_mAP_rerank"] = np.mean(reranked_aps)
    # The F7 ceiling: an exact Euclidean ranking of the whole database.
    for part in ("seen", "unseen"):
        rows = [i for i, label in enumerate(q["labels"]) if (label in seen) == (part == "seen")]
        aps, votes = [], []
        for i in rows:
            ranking = sorted(range(len(db["labels"])), key=lambda j: euclid[i, j])
            relevant = [db["labels"][j] == q["labels"][i] for j in ranking[:map_k]]
            hits = np.cumsum(relevant)
            aps.append(np.mean([hits[p] / (p + 1) for p in range(len(relevant)) if relevant[p]])
                       if any(relevant) else 0.0)
            votes.append(_vote([db["labels"][j] for j in ranking[:k]]) == q["labels"][i])
        out[f"{part}_mAP_f7"] = np.mean(aps)
        if part == "unseen":
            out["unseen_vote_f7"] = np.mean(votes)
    return out


def test_score_matches_a_brute_force_recomputation(bench, monkeypatch):
    # Clustered 32-bit codes (many Hamming ties), noisy features: mAP@50 over 120 codes, a
    # rerank pool of 30, radius 6, so every cut-off matters.
    monkeypatch.setattr(bench, "MAP_K", 50)
    monkeypatch.setattr(bench, "CANDIDATES", 30)
    rng = np.random.default_rng(7)
    centres = rng.integers(0, 2, size=(10, 32))

    def draw(n):
        labels = rng.integers(0, 10, size=n)
        flips = rng.random((n, 32)) < 0.15
        bits = centres[labels] ^ flips
        features = centres[labels] + rng.normal(0, 0.6, size=(n, 32))
        return {"codes": np.packbits(bits.astype(np.uint8), axis=1), "labels": labels,
                "features": features.astype(np.float32)}

    db, q = draw(120), draw(40)
    seen = (0, 1, 2, 4, 5, 7, 8)
    got = bench.score(db, q, seen, bits=32, radius=6, pools=(10, 30))
    expected = _reference(db, q, seen, k=8, map_k=50, candidates=30, radius=6)
    assert set(got) == set(bench.METRICS) | {"unseen_vote_rerank_10", "unseen_vote_rerank_30"}
    assert set(expected) == set(bench.METRICS)
    assert got["unseen_vote_rerank_30"] == got["unseen_vote_rerank"]
    smaller_pool = _reference(db, q, seen, k=8, map_k=50, candidates=10, radius=6)["unseen_vote_rerank"]
    assert got["unseen_vote_rerank_10"] == pytest.approx(smaller_pool, abs=1e-12)
    for name in bench.METRICS:
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name
    assert 0 < got["unseen_vote_radius"] < 1 and 0 < got["seen_mAP"] < 1
    assert 0 < got["unseen_mAP_f7"] < 1 and got["unseen_mAP_f7"] != got["unseen_mAP"]
    # The reranked list (a pool of 30 under mAP@50) is neither the Hamming ranking nor the exact F7 one.
    assert got["unseen_mAP_rerank"] not in (got["unseen_mAP"], got["unseen_mAP_f7"])


def test_summary_is_mean_and_sample_sd_over_partitions(bench):
    rows = [{"method": "dlbhc", "bits": 64, "conditions": {"clean": {"seen_mAP": v}}} for v in (0.5, 0.7, 0.9)]
    entry = bench.summarise(rows)["dlbhc"]["64"]["clean"]["seen_mAP"]
    assert entry["values"] == [0.5, 0.7, 0.9]
    assert entry["mean"] == pytest.approx(0.7) and entry["sd"] == pytest.approx(0.2)


def test_tiny_run_writes_json_and_tables(bench, tmp_path, monkeypatch):
    # 2 tune partitions of sklearn digits, a handful of images, 1 epoch, 16 bits.
    monkeypatch.setitem(bench.BUDGETS, "digits", bench.Budget(train_images=70, database_per_class=8,
                                                              queries_per_class=4, epochs=1, batch_size=16))
    # One method with its own epoch budget beside the dataset budget's single epoch.
    monkeypatch.setitem(bench.METHODS, "ms", replace(bench.METHODS["ms"], epochs=2))
    calls = []
    real_train_encoder = bench.train_encoder

    def spy(image_dir, out, *, method, init_trunk_from=None, **kwargs):
        path = real_train_encoder(image_dir, out, method=method, init_trunk_from=init_trunk_from, **kwargs)
        # Epochs actually trained: the model file's history holds one record per epoch.
        history = torch.load(path, map_location="cpu", weights_only=True)["extra"]["history"]
        calls.append((method, out, init_trunk_from, len(history)))
        return path

    monkeypatch.setattr(bench, "train_encoder", spy)
    methods = ["itq_pixels", "hashnet", "ms"]
    threads = torch.get_num_threads()
    try:
        payload = bench.main(["--dataset", "digits", "--partitions", "tune", "--limit-partitions", "2",
                              "--methods", ",".join(methods), "--bits", "16", "--threads", "1",
                              "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)  # the script sets the process-wide thread count
    # HashNet fine-tunes the DLBHC trunk trained just before it, on each partition.
    assert [c[0] for c in calls] == ["itq", "dlbhc", "hashnet", "ms_hash"] * 2
    assert calls[2][2] == calls[1][1] and calls[1][2] is None
    assert [c[3] for c in calls[1:4]] == [1, 1, 2]
    written = json.loads((tmp_path / "out" / "seen_unseen_tune.json").read_text())
    assert [p["name"] for p in written["partitions"]] == ["tune0", "tune1"]
    assert len(written["rows"]) == 2 * len(methods)
    assert {(row["method"], row["epochs"]) for row in written["rows"]} == {("itq_pixels", 1), ("hashnet", 1),
                                                                          ("ms", 2)}
    for key in methods:
        by_condition = written["summary"][key]["16"]
        assert set(by_condition) == set(bench.CONDITIONS)
        for condition in bench.CONDITIONS:
            assert set(by_condition[condition]) == set(bench.METRICS)
            for entry in by_condition[condition].values():
                values = entry["values"]
                assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
                assert entry["mean"] == pytest.approx(np.mean(values))
                assert entry["sd"] == pytest.approx(np.std(values, ddof=1))
    table = (tmp_path / "out" / "seen_unseen_tune.md").read_text()
    for condition in bench.CONDITIONS:
        assert f"### {condition}\n" in table
    assert table.count("| HashNet from DLBHC | 1 | 16 |") == len(bench.CONDITIONS)
    assert table.count("| Multi-Similarity hash | 2 | 16 |") == len(bench.CONDITIONS)
    assert payload["total_s"] > 0


def test_scoring_fewer_conditions_scores_the_same_queries(bench, tmp_path, monkeypatch):
    monkeypatch.setitem(bench.BUDGETS, "digits", bench.Budget(train_images=70, database_per_class=8,
                                                              queries_per_class=4, epochs=1, batch_size=16))
    args = ["--dataset", "digits", "--partitions", "tune", "--only", "tune1", "--methods", "itq_pixels",
            "--bits", "16", "--threads", "1", "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path)]
    threads = torch.get_num_threads()
    try:
        every = bench.main(args)
        one = bench.main(args + ["--conditions", "shifted+noisy", "--name", "sn"])
        with pytest.raises(SystemExit):
            bench.main(args + ["--conditions", "blurred"])
    finally:
        torch.set_num_threads(threads)
    assert [p["name"] for p in every["partitions"]] == [p["name"] for p in one["partitions"]] == ["tune1"]
    assert set(one["summary"]["itq_pixels"]["16"]) == {"shifted+noisy"}
    assert one["rows"][0]["conditions"]["shifted+noisy"] == every["rows"][0]["conditions"]["shifted+noisy"]
    table = (tmp_path / "out" / "seen_unseen_tune_sn.md").read_text()
    assert "### shifted+noisy\n" in table and "### clean" not in table
    assert (tmp_path / "out" / "seen_unseen_tune.json").exists()


def test_method_epochs_override_own_and_budget(bench):
    budget = bench.Budget(train_images=10, database_per_class=1, queries_per_class=1, epochs=4)
    anchor = bench.MethodSetup("a", "dlbhc")
    own = bench.MethodSetup("b", "proxy_anchor_hash", epochs=12)
    tuned = bench.MethodSetup("c", "hashnet", epochs=10, epochs_scale=0.4)
    assert [bench.method_epochs(s, budget) for s in (anchor, own, tuned)] == [4, 12, 4]
    assert [bench.method_epochs(s, budget, 8) for s in (anchor, own, tuned)] == [8, 8, 3]
    assert bench.method_epochs(bench.MethodSetup("d", "hashnet", epochs_scale=0.1), budget) == 1


def test_every_method_setup_builds_its_model(bench):
    # Catches a recipe whose keywords its method or backbone does not take before a long run does.
    from encoders import create_encoder
    from encoders.label_rotations import model_classes

    for key, setup in bench.METHODS.items():
        assert setup.init_trunk_from is None or setup.init_trunk_from in bench.METHODS, key
        if setup.refit_of:  # trained exactly as the method it refits, or reusing its model would be wrong
            base = bench.METHODS[setup.refit_of]
            assert setup.code_fit != base.code_fit and base.refit_of is None, key
            assert replace(setup, label=base.label, code_fit=base.code_fit, refit_of=None) == base, key
        classes = model_classes(7, setup.label_rotations)
        model = create_encoder(setup.method, backbone=setup.backbone, bits=16, num_classes=classes,
                               **setup.encoder_kwargs)
        stem = getattr(getattr(model, "backbone", None), "stem", None)
        assert (getattr(stem, "sigma", 0.0) > 0) == ("blur stem" in setup.label), key


def test_a_refit_row_reuses_the_trained_network(bench, tmp_path, monkeypatch):
    monkeypatch.setitem(bench.BUDGETS, "digits", bench.Budget(train_images=70, database_per_class=8,
                                                              queries_per_class=4, epochs=1, batch_size=16))
    monkeypatch.setitem(bench.METHODS, "proxy_anchor_blur", replace(bench.METHODS["proxy_anchor_blur"], epochs=1))
    refits = ("proxy_anchor_blur_itq", "proxy_anchor_blur_dbq")
    for key in refits:
        monkeypatch.setitem(bench.METHODS, key, replace(bench.METHODS[key], epochs=1))
    calls = []
    real_train_encoder = bench.train_encoder

    def spy(image_dir, out, **kwargs):
        calls.append(out)
        return real_train_encoder(image_dir, out, **kwargs)

    monkeypatch.setattr(bench, "train_encoder", spy)
    saved = []
    real_save = bench.save_encoder

    def save_spy(model, path, **kwargs):
        saved.append(kwargs["extra"])
        return real_save(model, path, **kwargs)

    monkeypatch.setattr(bench, "save_encoder", save_spy)
    threads = torch.get_num_threads()
    try:
        payload = bench.main(["--dataset", "digits", "--partitions", "tune", "--only", "tune0", "--methods",
                              ",".join(refits) + ",proxy_anchor_blur", "--bits", "16", "--threads", "1",
                              "--conditions", "shifted+noisy", "--out", str(tmp_path / "out"),
                              "--work-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 1  # one training serves the three rows
    # The refit model files: the trained one's record, its code fit changed.
    assert [extra["train_config"]["code_fit"] for extra in saved] == ["itq", "dbq"]
    assert all(len(extra["history"]) == 1 for extra in saved)
    rows = {row["method"]: row["conditions"]["shifted+noisy"] for row in payload["rows"]}
    trained = rows["proxy_anchor_blur"]
    for key in refits:
        # The same network: the same F7 and so the same F7 ceiling; other codes.
        for name in ("seen_mAP_f7", "unseen_mAP_f7", "unseen_vote_f7"):
            assert rows[key][name] == trained[name], (key, name)
        assert rows[key]["seen_mAP"] != trained["seen_mAP"], key


def test_a_two_view_row_trains_with_two_views_and_its_refit_reuses_it(bench, tmp_path, monkeypatch):
    configs = []

    def spy(image_dir, out, *, config, encoder_kwargs, **kwargs):
        configs.append((config, encoder_kwargs))
        return out

    monkeypatch.setattr(bench, "train_encoder", spy)
    budget = bench.Budget(train_images=10, database_per_class=1, queries_per_class=1, epochs=4)
    run = bench.Run({"train": tmp_path}, 10, tmp_path, budget, 64, 0, "cpu", False)
    bench.train_method("proxy_anchor_views_ntx", run)
    (config, kwargs), = configs
    assert (config.views, config.epochs, config.augment, kwargs["contrastive_weight"]) == (2, 6, "shift_noise", 0.5)
    assert bench.METHODS["proxy_anchor_views_ntx_dbq"].refit_of == "proxy_anchor_views_ntx"


def test_the_upright_row_fine_tunes_the_rotation_trunk(bench, tmp_path, monkeypatch):
    monkeypatch.setitem(bench.BUDGETS, "digits", bench.Budget(train_images=70, database_per_class=8,
                                                              queries_per_class=4, epochs=1, batch_size=16))
    calls = []
    real_train_encoder = bench.train_encoder

    def spy(image_dir, out, *, config, init_trunk_from=None, **kwargs):
        calls.append((out, config.label_rotations, config.epochs, init_trunk_from))
        return real_train_encoder(image_dir, out, config=config, init_trunk_from=init_trunk_from, **kwargs)

    monkeypatch.setattr(bench, "train_encoder", spy)
    threads = torch.get_num_threads()
    try:
        payload = bench.main(["--dataset", "digits", "--partitions", "tune", "--only", "tune0", "--methods",
                              "proxy_anchor_blur_rot_up,proxy_anchor_blur_rot_up_dbq", "--bits", "16", "--epochs",
                              "3", "--threads", "1", "--conditions", "shifted+noisy", "--out", str(tmp_path / "out"),
                              "--work-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    # The rotation trunk trains first (all 3 epochs, 4 turns), then the upright row from its file for a third.
    (trunk, turns, trunk_epochs, start), (_, upright_turns, epochs, upright_start) = calls
    assert (turns, trunk_epochs, start) == (True, 3, None)
    assert (upright_turns, epochs, upright_start) == (False, 1, trunk)
    assert [(row["method"], row["epochs"]) for row in payload["rows"]] == [
        ("proxy_anchor_blur_rot_up", 1), ("proxy_anchor_blur_rot_up_dbq", 1)]
