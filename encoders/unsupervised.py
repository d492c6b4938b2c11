"""The image-folder route of the unsupervised methods (classical baselines, GAN hashing).

``hashindex train IMAGE_DIR --method itq --backbone pixels`` lands here through
:func:`hashapp.pipeline.train_encoder`: the folder may have class sub-folders or hold
its images directly, labels are never read. The backbone is frozen; its F7 features of
every training image are extracted once, the hasher is fitted on them, and the result is
saved as a :class:`~encoders.feature_hashing.FeatureHashModel` that encodes, indexes and
loads like any encoder.

Which backbone: an untrained ``small_cnn`` gives random features; use ``pixels`` for
small greyscale images (MNIST, digits) or a pretrained backbone (e.g. EfficientNet-Lite0
with local weights) for natural images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from .checkpoint import save_encoder
from .data import ImageFileDataset, ImageList, collate_skipping_unreadable, image_transform, list_images
from .feature_hashing import FeatureHashModel
from .memory import keep_freed_memory
from .registry import create_encoder
from .training import DEFAULT_EPOCHS, TrainConfig, resolve_device


@torch.no_grad()
def extract_features(model: FeatureHashModel, images: ImageList, *, batch_size: int = 64, num_workers: int = 0,
                     device: str = "auto", reconstruction_size: int | None = None, ids: "list[int] | None" = None,
                     progress: bool = False) -> tuple[np.ndarray, np.ndarray | None, list[tuple[str, str]]]:
    """Backbone features ``(n, feature_dim)`` of the readable images, their downsampled
    ``reconstruction_size``-px inputs flattened (``None`` unless asked), and the skipped
    ``(path, reason)`` pairs."""
    dev = resolve_device(device)
    backbone = model.backbone.to(dev).eval()
    loader = DataLoader(ImageFileDataset(images, image_transform(model.input_cfg), ids=ids), batch_size=batch_size,
                        shuffle=False, num_workers=num_workers, collate_fn=collate_skipping_unreadable)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="extracting features", unit="batch", disable=None)
    features, targets, skipped = [], [], []
    with keep_freed_memory():
        for batch in loader:
            skipped.extend((images.samples[i][0], reason) for i, reason in batch.failed)
            if len(batch.ids) == 0:
                continue
            x = batch.images.to(dev)
            features.append(backbone(x).float().cpu().numpy())
            if reconstruction_size:
                small = F.adaptive_avg_pool2d(x, reconstruction_size)
                targets.append(small.flatten(1).float().cpu().numpy())
    if not features:
        raise ValueError(f"{images.root}: none of the {len(images)} images could be read")
    return np.concatenate(features), (np.concatenate(targets) if reconstruction_size else None), skipped


def fit_feature_encoder(
    image_dir: "str | os.PathLike",
    out: "str | os.PathLike",
    *,
    method: str,
    backbone: str = "pixels",
    bits: int = 64,
    config: TrainConfig | None = None,
    encoder_kwargs: dict | None = None,
    max_train_images: int | None = None,
    progress: bool = True,
) -> Path:
    """Fit the unsupervised ``method`` on the backbone features of ``image_dir``'s images and
    save it to ``out``. From ``config``: ``seed``, ``device``, ``batch_size`` and
    ``num_workers`` (feature extraction) and, for iterative methods (``gan_hash``), ``epochs``;
    the GAN's own optimiser settings are encoder keywords (``encoder_kwargs``)."""
    config = config or TrainConfig()
    if config.label_rotations:
        raise ValueError(f"{method!r} is fitted on fixed features without labels; label rotations are for trained "
                         f"supervised methods")
    images = list_images(image_dir, supervised=False)
    model = create_encoder(method, backbone=backbone, bits=bits, seed=config.seed, **(encoder_kwargs or {}))
    if not isinstance(model, FeatureHashModel):
        raise ValueError(f"{method!r} is not an unsupervised feature-fitted method")
    ids = None
    if max_train_images is not None and max_train_images < len(images):
        rng = np.random.default_rng(config.seed)
        ids = sorted(rng.choice(len(images), max_train_images, replace=False).tolist())
    hasher = model.hasher
    features, targets, skipped = extract_features(
        model, images, batch_size=config.batch_size or 64, num_workers=config.num_workers, device=config.device,
        reconstruction_size=hasher.reconstruction_size, ids=ids, progress=progress)
    if hasher.iterative:
        epochs = DEFAULT_EPOCHS if config.epochs is None else config.epochs
        hasher.fit(features, targets, device=config.device, epochs=epochs, progress=progress)
    else:
        hasher.fit(features)
    model.cpu().eval()
    extra = {"train_images": int(len(features)), "skipped": [list(s) for s in skipped],
             "history": list(getattr(hasher, "history", []))}
    return save_encoder(model, out, class_names=images.classes, extra=extra)
