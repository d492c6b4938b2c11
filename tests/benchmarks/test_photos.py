import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import photos  # noqa: E402

pytest.importorskip("skimage")


def test_partitions_are_disjoint_and_tuning_is_apart_from_report():
    names = [f"c{i}" for i in range(20)]
    unseen = [photos.partition_classes(p, names)[1] for p in range(photos.PARTITIONS)]
    assert sorted(c for u in unseen for c in u) == sorted(names)  # every class unseen exactly once
    seen, first = photos.partition_classes(0, names)
    assert len(seen) == 16 and not set(seen) & set(first)
    assert not set(photos.SPLITS["tuning"]) & set(photos.SPLITS["report"])
    assert photos.partition_classes(3, names) == photos.partition_classes(3, names)


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
