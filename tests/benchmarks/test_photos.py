import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import photos  # noqa: E402

pytest.importorskip("skimage")


NAMES = sorted(photos.SKIMAGE_PHOTOS + photos.SKLEARN_PHOTOS)


def test_partitions_are_disjoint_and_tuning_is_apart_from_report():
    names = [f"c{i}" for i in range(20)]
    for cuts in photos.ORDER_SEEDS.values():  # within one class order, every class unseen at most once
        unseen = [c for p in cuts for c in photos.partition_classes(p, names)[1]]
        assert len(unseen) == len(set(unseen)) == len(cuts) * photos.UNSEEN_PER_PARTITION
    first = [c for p in photos.ORDER_SEEDS[0] for c in photos.partition_classes(p, names)[1]]
    assert sorted(first) == sorted(names)
    seen, unseen = photos.partition_classes(0, names)
    assert len(seen) == 16 and not set(seen) & set(unseen)
    assert not set(photos.SPLITS["tuning"]) & set(photos.SPLITS["report"])
    assert set(photos.SPLITS["tuning"]) | set(photos.SPLITS["report"]) == set(range(photos.PARTITIONS))
    assert photos.partition_classes(3, names) == photos.partition_classes(3, names)


def test_extra_tuning_partitions_hold_out_other_classes_than_report_ones():
    report = [set(photos.partition_classes(p, NAMES)[1]) for p in photos.SPLITS["report"]]
    extra = [set(photos.partition_classes(p, NAMES)[1]) for p in (5, 6, 7)]
    assert all(len(u) == 4 and u not in report for u in extra)
    assert all(u not in extra[:i] for i, u in enumerate(extra))  # three different held-out sets


def test_partitions_0_to_4_hold_out_what_earlier_runs_recorded():
    # The class cut of partitions 0-4 must not move: their results files were written before 5-7 existed.
    for name in ("photos_tuning_dlbhc_random_freezebn_bal1", "photos_report_dlbhc_balance"):
        rows = json.loads((photos.RESULTS_DIR / f"{name}.json").read_text())["rows"]
        assert rows
        for row in rows:
            assert photos.partition_classes(row["partition"], NAMES)[1] == row["unseen_classes"]


def test_each_partition_draws_its_own_views(tmp_path):
    loaded = photos.load_photos()

    def first_view(partition):
        part = photos.make_partition(loaded, partition, tmp_path / str(partition), train=1, database=1, queries=1,
                                     size=24)
        return (part["folders"]["database"] / "cat" / "d000.png").read_bytes()

    views = [first_view(p) for p in range(photos.PARTITIONS)]
    assert len(set(views)) == photos.PARTITIONS  # one seed each
    assert first_view(6) == views[6]


def test_a_partition_out_of_range_is_one_error(capsys):
    with pytest.raises(SystemExit):
        photos.main(["--partitions", "2,8"])
    assert "--partitions: numbers from 0 to 7, got 2,8" in capsys.readouterr().err


def test_the_photos_load_offline():
    loaded = photos.load_photos()
    assert len(loaded) == 20 and all(im.mode == "RGB" for im in loaded.values())


def test_tiny_run_writes_json_and_markdown(tmp_path):
    payload = photos.main(["--partitions", "2", "--methods", "dlbhc,itq", "--epochs", "1", "--train-views", "2",
                           "--database-views", "2", "--query-views", "1", "--size", "48", "--threads", "1",
                           "--backbone", "small_cnn", "--out", str(tmp_path), "--name", "tiny"])
    saved = json.loads((tmp_path / "tiny.json").read_text())
    assert saved["partitions_done"] == [2] and len(saved["rows"]) == 2
    for row in saved["rows"]:
        assert row["seen"]["mAP@100"] is not None and 0 <= row["unseen"]["vote@8"] <= 1
        assert row["peak_rss_gb"] > 0.1 and row["database_health"]["images"] == 40
    assert set(payload["summary"]) == {"dlbhc", "itq"}
    table = (tmp_path / "tiny.md").read_text()
    assert "| DLBHC |" in table and "| ITQ (frozen features) |" in table


def test_speed_run_writes_its_figures(tmp_path):
    import photo_speed

    result = photo_speed.main(["--images", "6", "--warmup", "4", "--threads", "1", "--backbone", "small_cnn",
                               "--end-to-end", "20", "--out", str(tmp_path), "--name", "speed"])
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved["images"] == result["images"] == 6 and saved["input_size"] == [3, 32, 32]
    assert saved["train_images_per_s"] > 0 and saved["encode_images_per_s"] > 0 and saved["peak_rss_gb"] > 0.1
    assert saved["train_config"]["batch_size"] == 64  # small_cnn: no pretrained weights, the common default
    e2e = saved["end_to_end"]  # 16 seen classes, so 2 views each
    assert e2e["images"] == 32 and e2e["train_images_per_s"] > 0 and e2e["encode_images_per_s"] > 0
