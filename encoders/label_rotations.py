"""Self-supervised label augmentation (Lee, Hwang & Shin, ICML 2020), ``TrainConfig.label_rotations``.

Each training image is turned by a random multiple of 90 degrees and its label becomes the
pair (class, turn), so the loss separates 4 x as many classes and the features must hold more
of each image's shape than telling the classes apart needs. Only training images turn: the
database and the queries stay upright.
"""

from __future__ import annotations

import torch

#: Quarter turns: 0, 90, 180 and 270 degrees.
ROTATIONS = 4


def model_classes(num_classes: int, label_rotations: bool) -> int:
    """The classes a model trained on ``num_classes`` classes must separate: ``num_classes`` x
    :data:`ROTATIONS` (class, quarter turn) pairs with ``label_rotations``."""
    return num_classes * ROTATIONS if label_rotations else num_classes


def rotate_batch(images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn each of ``images`` ``(n, c, h, w)`` by ``r`` quarter turns (``torch.rot90``), ``r``
    drawn uniformly from 0-3 per image with ``generator`` (a CPU one: the training loop seeds
    its own per epoch, so a resumed run turns the same images the same way); its class index
    ``y`` becomes ``y * 4 + r``. Square images only: a turned image must keep its size."""
    if images.shape[-2] != images.shape[-1]:
        raise ValueError(f"label rotations need square images, got {images.shape[-2]} x {images.shape[-1]}")
    turns = torch.randint(ROTATIONS, (len(images),), generator=generator).to(images.device)
    turned = images.clone()
    for r in range(1, ROTATIONS):
        chosen = turns == r
        turned[chosen] = torch.rot90(images[chosen], r, dims=(-2, -1))
    return turned, labels * ROTATIONS + turns


def check_label_rotations(model, class_names: list[str], label_rotations: bool = True) -> None:
    """With ``label_rotations``, refuse to train ``model`` on rotations of images of
    ``class_names`` (before training) unless the images are labelled, the inputs square and
    the model built for (class, rotation) pairs."""
    if not label_rotations:
        return
    if not class_names:
        raise ValueError("label rotations need labelled images (class sub-folders)")
    _, h, w = model.input_cfg["input_size"]
    if h != w:
        raise ValueError(f"label rotations need square inputs, {model.method or type(model).__name__} takes "
                         f"{h} x {w}")
    expected = model_classes(len(class_names), True)
    if model.num_classes != expected:
        raise ValueError(f"label rotations: the model must be built with num_classes={expected} ({len(class_names)} "
                         f"classes x {ROTATIONS} rotations, see model_classes), got {model.num_classes}")
