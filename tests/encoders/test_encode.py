import json

import numpy as np
import pytest
import torch

from encoders import create_encoder, memory
from encoders.data import decode_rgb, list_images
from encoders.encode import SKIPPED_REPORT, encode_files, encode_folder, encode_images
from hashindex import ShardReader


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_encoder("dlbhc", backbone="small_cnn", bits=32, num_classes=4, width=4, feature_dim=16).eval()


def test_encode_folder_writes_ids_labels_paths(tmp_path, digits_folder, model):
    report = encode_folder(model, digits_folder, tmp_path / "s", shard_size=50, batch_size=16, progress=False)
    assert report.encoded == 120 and report.skipped == []
    reader = ShardReader(tmp_path / "s")
    out = reader.read(("codes", "labels", "ids", "features", "paths"))
    images = list_images(digits_folder)
    np.testing.assert_array_equal(out["ids"], np.arange(120))  # id = position in the sorted listing
    np.testing.assert_array_equal(out["labels"], [label for _, label in images.samples])
    assert out["paths"][0] == "0/img000000.png" and reader.class_names == ["0", "1", "2", "3"]
    codes, feats, encoded, failed = encode_files(model, [p for p, _ in images.samples[:5]])
    np.testing.assert_array_equal(codes, out["codes"][:5])
    np.testing.assert_allclose(feats, out["features"][:5], rtol=1e-2, atol=1e-2)
    assert encoded == [0, 1, 2, 3, 4] and failed == []


@pytest.mark.skipif(memory._LIBC is None, reason="glibc malloc only")
def test_every_encode_path_keeps_freed_memory(tmp_path, digits_folder, model, monkeypatch):
    # Outside keep_freed_memory each batch of large activations is mmap'ed and zero-filled anew
    # (encode_files ran outside it and encoded 224 px photos at half the rate of encode_folder).
    depths = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda images: depths.append(memory._depth) or encode(images))
    paths = [path for path, _ in list_images(digits_folder).samples[:3]]
    encode_folder(model, digits_folder, tmp_path / "s", progress=False)
    encode_files(model, paths)
    encode_images(model, [decode_rgb(path) for path in paths])
    assert len(depths) >= 3 and min(depths) >= 1
    assert memory._depth == 0


def test_corrupt_files_skipped_and_listed(tmp_path, digits_folder, model):
    import shutil

    root = tmp_path / "img"
    shutil.copytree(digits_folder, root)
    (root / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    report = encode_folder(model, root, tmp_path / "s", progress=False)
    assert report.encoded == 120 and len(report.skipped) == 1
    lines = [json.loads(line) for line in (tmp_path / "s" / SKIPPED_REPORT).read_text().splitlines()]
    assert lines[0]["path"].endswith("1/broken.png") and lines[0]["reason"]
    ids = ShardReader(tmp_path / "s").read(("ids",))["ids"]
    broken_id = [p for p, _ in list_images(root).samples].index(str(root / "1" / "broken.png"))
    assert broken_id not in ids and len(ids) == 120


def test_resume_continues_after_last_complete_shard(tmp_path, digits_folder, model):
    full = encode_folder(model, digits_folder, tmp_path / "full", shard_size=32, progress=False)
    part = encode_folder(model, digits_folder, tmp_path / "part", shard_size=32, progress=False,
                         ids=list(range(50)))
    assert part.encoded == 50
    resumed = encode_folder(model, digits_folder, tmp_path / "part", shard_size=32, resume=True, progress=False)
    assert resumed.resumed_after == 50 and resumed.total == full.total == 120
    a, b = (ShardReader(tmp_path / d).read(("codes", "ids", "labels")) for d in ("full", "part"))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
