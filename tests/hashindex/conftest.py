"""Fixtures of the fault tests: one small digit folder and a factory of tiny saved encoders."""

from __future__ import annotations

import numpy as np
import pytest

from hashindex.datasets import load_digits_images, write_image_folder


@pytest.fixture(scope="session")
def digits16_folder(tmp_path_factory):
    """60 sklearn digits (16 px) of each of classes 0-3 in class sub-folders; copy it before changing it."""
    images, labels = load_digits_images(size=16)
    rows = np.concatenate([np.flatnonzero(labels == c)[:60] for c in range(4)])
    return write_image_folder(images[rows], labels[rows], tmp_path_factory.mktemp("digits16") / "images")


@pytest.fixture(scope="session")
def save_tiny_encoder():
    """Factory: ``save(path, seed, feature_dim=16)`` saves an untrained 32-bit, 4-class DLBHC on 16 px inputs."""
    import torch

    from encoders import create_encoder, save_encoder

    def save(path, seed: int = 0, feature_dim: int = 16):
        torch.manual_seed(seed)
        model = create_encoder("dlbhc", backbone="small_cnn", bits=32, num_classes=4, width=4,
                               feature_dim=feature_dim, input_size=16)
        return save_encoder(model, path, class_names=["0", "1", "2", "3"])

    return save
