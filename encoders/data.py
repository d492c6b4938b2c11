"""Image folders as datasets, torchvision-style, that skip unreadable files instead of failing.

A supervised folder has one sub-folder per class (sorted, as ``torchvision.datasets.ImageFolder``
orders them); an unsupervised folder may instead hold images directly (label ``-1``).

Nothing here imports torchvision (about a second and a half of start-up, most of it
``torch._dynamo`` pulled in by ``torchvision.ops``): listing a folder and the test-time
transform are written out, and give what torchvision's would (tests/encoders/test_data.py).
"""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

#: The file extensions listed as images: torchvision's ``datasets.folder.IMG_EXTENSIONS``.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class ImageList:
    """The sorted image files of a folder with their labels; position = the image's id."""

    root: Path
    samples: list[tuple[str, int]]
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)


def list_images(root: "str | os.PathLike", supervised: bool = True) -> ImageList:
    """List the images under ``root``. Supervised: ``root/<class>/**/<image>``, classes sorted.
    Unsupervised: the same if class folders exist, else every image under ``root`` (label -1)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    class_to_idx = {name: i for i, name in enumerate(classes)}
    if classes:
        samples = [(path, class_to_idx[name]) for name in classes for path in _image_files(root / name)]
    elif supervised:
        raise ValueError(f"{root} has no class sub-folders; a supervised method needs root/<class>/<image> files")
    else:
        samples = [(path, -1) for path in _image_files(root)]
    if not samples:
        raise ValueError(f"{root} holds no image files (extensions: {', '.join(IMG_EXTENSIONS)})")
    return ImageList(root=root, samples=list(samples), classes=list(classes))


def listing_fingerprint(images: ImageList) -> str:
    """SHA-256 of a listing's relative paths and labels: equal iff the ids mean the same files."""
    digest = hashlib.sha256()
    for path, label in images.samples:
        digest.update(os.path.relpath(path, images.root).encode("utf-8", "surrogateescape") + f"\0{label}\n".encode())
    return digest.hexdigest()


def _image_files(folder: Path) -> list[str]:
    """Image files under ``folder``, sorted. Directory symlinks are not followed (a symlink
    loop cannot trap the walk); symlinked files are listed like any file."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found.extend(os.path.join(dirpath, n) for n in filenames if n.lower().endswith(IMG_EXTENSIONS))
    return sorted(found)


class ImageTransform:
    """An RGB image resized (bilinear) to ``(h, w)``, as a ``(3, h, w)`` float tensor in [0, 1]
    normalised by channel ``mean`` and ``std``: torchvision's ``Resize((h, w))``, ``ToTensor()``
    and ``Normalize(mean, std)`` on PIL images, the same operations in the same order."""

    def __init__(self, size: tuple[int, int], mean, std) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        h, w = self.size
        pixels = np.array(image.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.uint8)
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous().float().div(255)
        return tensor.sub_(self.mean).div_(self.std)


def image_transform(input_cfg: dict) -> Callable:
    """Resize to the backbone's input size, convert to a normalised tensor (:class:`ImageTransform`)."""
    _, h, w = input_cfg["input_size"]
    return ImageTransform((h, w), input_cfg["mean"], input_cfg["std"])


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB (greyscale, palette, RGBA and 16-bit inputs converted).

    Raises for anything unreadable, including a decompression bomb (PIL's ``MAX_IMAGE_PIXELS``)
    and a path that is not a regular file (a FIFO would block the open forever)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path}: not a regular file")
    return decode_rgb(path)


def decode_rgb(source: "str | BinaryIO") -> Image.Image:
    """Decode an image file or file object as :func:`load_rgb` does (no regular-file check)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                im = im.point(lambda v: v * (1 / 256)).convert("L")
            return im.convert("RGB")


class ImageFileDataset(Dataset):
    """Items are ``(tensor | None, label, id, error | None)``; unreadable files give ``None``
    and the reason, so a batch can drop them and the caller can list them."""

    def __init__(self, images: ImageList, transform: Callable, ids: "list[int] | None" = None) -> None:
        self.images = images
        self.transform = transform
        self.ids = list(range(len(images))) if ids is None else list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        image_id = self.ids[i]
        path, label = self.images.samples[image_id]
        try:
            tensor = self.transform(load_rgb(path))
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable file"
            return None, label, image_id, f"{type(exc).__name__}: {exc}"
        return tensor, label, image_id, None


@dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor
    failed: list[tuple[int, str]]  #: (id, reason) of the items that could not be read


def collate_skipping_unreadable(items) -> Batch:
    good = [it for it in items if it[3] is None]
    failed = [(it[2], it[3]) for it in items if it[3] is not None]
    if good:
        images = torch.stack([it[0] for it in good])
    else:
        images = torch.empty(0)
    return Batch(
        images=images,
        labels=torch.tensor([it[1] for it in good], dtype=torch.long),
        ids=torch.tensor([it[2] for it in good], dtype=torch.long),
        failed=failed,
    )
