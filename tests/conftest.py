"""Shared fixtures: seeded generators and small real image folders."""

from __future__ import annotations

import numpy as np
import pytest

from hashindex.datasets import load_digits_images, write_image_folder


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def digits():
    """sklearn digits upscaled to 32x32: (images, labels)."""
    return load_digits_images(size=32)


@pytest.fixture(scope="session")
def write_unlabelled_digits():
    """Factory: ``write(root, n)`` puts ``n`` digit images (28 px) directly in ``root``,
    with no class sub-folders and no labels, and returns ``root``."""
    from PIL import Image

    def write(root, n: int):
        images, _ = load_digits_images(size=28)
        root.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(images[i]).save(root / f"img{i:04d}.png")
        return root

    return write


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory, digits):
    """A small class-per-sub-folder image tree: 30 digits of each of classes 0-3."""
    images, labels = digits
    rows = np.concatenate([np.flatnonzero(labels == c)[:30] for c in range(4)])
    return write_image_folder(images[rows], labels[rows], tmp_path_factory.mktemp("digits") / "images")


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance on 127.0.0.1 with 2 CPUs, stopped when the module's tests end."""
    ray = pytest.importorskip("ray")
    from hashindex.cluster import connect

    connect(num_cpus=2)
    yield
    ray.shutdown()
