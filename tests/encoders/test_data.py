import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from encoders.data import IMG_EXTENSIONS, ImageFileDataset, collate_skipping_unreadable, image_transform, list_images

CFG = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3}


def _tree(root):
    (root / "b").mkdir(parents=True)
    (root / "a").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "a" / "grey.png")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(root / "a" / "rgba.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).convert("P").save(root / "b" / "palette.png")
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(root / "b" / "sixteen.png")
    (root / "b" / "zero.jpg").write_bytes(b"")
    (root / "b" / "text.png").write_text("not an image")
    (root / "b" / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_classes_sorted_and_files_listed(tmp_path):
    images = list_images(_tree(tmp_path / "img"))
    assert images.classes == ["a", "b"]
    names = [(p.split("/")[-1], label) for p, label in images.samples]
    assert names == [("grey.png", 0), ("rgba.png", 0), ("palette.png", 1), ("sixteen.png", 1),
                     ("text.png", 1), ("zero.jpg", 1)]


def test_unreadable_files_are_reported_not_fatal(tmp_path):
    images = list_images(_tree(tmp_path / "img"))
    batch = collate_skipping_unreadable([ImageFileDataset(images, image_transform(CFG))[i] for i in range(6)])
    assert batch.images.shape == (4, 3, 16, 16)  # grey, RGBA, palette and 16-bit all become RGB
    assert batch.ids.tolist() == [0, 1, 2, 3]
    failed = dict(batch.failed)
    assert set(failed) == {4, 5} and all("UnidentifiedImageError" in r for r in failed.values())


def test_supervised_needs_class_folders(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(ValueError, match="no class sub-folders"):
        list_images(tmp_path / "flat")
    unsup = list_images(tmp_path / "flat", supervised=False)
    assert unsup.classes == [] and [label for _, label in unsup.samples] == [-1]


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no image files"):
        list_images(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "missing")


def test_symlink_loop_does_not_trap_the_listing(tmp_path):
    root = _tree(tmp_path / "img")
    (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)
    assert len(list_images(root)) == 6


@pytest.mark.parametrize("size,input_size", [((37, 23), (3, 16, 16)), ((64, 48), (3, 32, 24)), ((16, 16), (3, 16, 16))])
def test_image_transform_gives_what_torchvision_gives(rng, size, input_size):
    from torchvision import transforms

    cfg = {"input_size": input_size, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    image = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    reference = transforms.Compose([transforms.Resize(input_size[1:]), transforms.ToTensor(),
                                    transforms.Normalize(cfg["mean"], cfg["std"])])(image)
    ours = image_transform(cfg)(image)
    assert ours.shape == input_size and ours.dtype == reference.dtype
    assert torch.equal(ours, reference)


def test_listing_agrees_with_torchvision(tmp_path):
    from torchvision.datasets.folder import IMG_EXTENSIONS as TORCHVISION_EXTENSIONS, find_classes

    assert IMG_EXTENSIONS == TORCHVISION_EXTENSIONS
    root = _tree(tmp_path / "img")
    (root / "B").mkdir()
    assert list_images(root).classes == find_classes(str(root))[0] == ["B", "a", "b"]


def test_importing_the_encoders_does_not_import_torchvision():
    # torchvision (and torch._dynamo behind it) and pytorch-metric-learning are start-up time that
    # listing, encoding and search don't need.
    code = ("import sys, encoders, encoders.data; "
            "print(sorted({'torchvision', 'torch._dynamo', 'pytorch_metric_learning'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
