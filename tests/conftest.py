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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, digits):
    """A 32-bit DLBHC encoder trained briefly on 30 digits of each of classes 0-4. Indexes built
    from ``digits_folder`` hold classes 0-3 only, so class 4 is new to them but known to the
    encoder: tests of adding a class check the add path, not generalisation to unseen classes
    (``benchmarks/seen_unseen.py`` measures that)."""
    from encoders.training import TrainConfig
    from hashapp.pipeline import train_encoder

    images, labels = digits
    rows = np.concatenate([np.flatnonzero(labels == c)[:30] for c in range(5)])
    folder = write_image_folder(images[rows], labels[rows], tmp_path_factory.mktemp("train5") / "images")
    return train_encoder(folder, tmp_path_factory.mktemp("model") / "model.pt", bits=32,
                         config=TrainConfig(epochs=4, batch_size=16, seed=0), progress=False)


def _tiny_build(out, digits_folder, tiny_model):
    from hashapp.pipeline import build

    build(digits_folder, out, model_path=tiny_model, shard_size=50, progress=False)
    return out


@pytest.fixture
def tiny_build(tmp_path, digits_folder, tiny_model):
    """A fresh build (shards + flat index) of ``digits_folder`` with ``tiny_model``: ``out`` dir."""
    return _tiny_build(tmp_path / "build", digits_folder, tiny_model)


@pytest.fixture(scope="module")
def shared_build(tmp_path_factory, digits_folder, tiny_model):
    """Like ``tiny_build``, shared by a module's tests: they must not change it."""
    return _tiny_build(tmp_path_factory.mktemp("shared") / "build", digits_folder, tiny_model)


@pytest.fixture(scope="session")
def new_class_folder(tmp_path_factory, digits):
    """30 images of digit 4 that ``tiny_model`` did not train on, under ``<root>/4/``: ``root``."""
    images, labels = digits
    rows = np.flatnonzero(labels == 4)[30:60]
    return write_image_folder(images[rows], np.zeros(len(rows), int), tmp_path_factory.mktemp("new") / "images",
                              class_names=["4"], prefix="new")
