"""Training augmentations: random shifts, flips and pixel noise on top of an encoder's test-time
transform (``TrainConfig.augment``)."""

from __future__ import annotations

import torch

from .data import image_transform

AUGMENTATIONS = (None, "shift", "shift_flip", "shift_noise")
#: Gaussian pixel noise of ``"shift_noise"``: its sd (pixels in [0, 1]) and the share of images it hits.
NOISE_SD, NOISE_P = 0.1, 0.5


def train_transform(input_cfg: dict, augment: str | None = None):
    """The encoder's test-time transform, plus, when ``augment`` is set, a random shift of up
    to 1/8 of the image (reflect-padded, then cropped back to size: the scale the encoder
    sees at test time is kept), for ``"shift_flip"`` a random horizontal flip, and for
    ``"shift_noise"`` Gaussian pixel noise on some images (:class:`PixelNoise`)."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; expected one of {AUGMENTATIONS}")
    if augment is None:
        return image_transform(input_cfg)
    from torchvision import transforms

    _, h, w = input_cfg["input_size"]
    steps = [transforms.Resize((h, w)),
             transforms.RandomCrop((h, w), padding=(max(1, w // 8), max(1, h // 8)), padding_mode="reflect")]
    if augment == "shift_flip":
        steps.append(transforms.RandomHorizontalFlip())
    steps.append(transforms.ToTensor())
    if augment == "shift_noise":
        steps.append(PixelNoise(NOISE_SD, NOISE_P))
    steps.append(transforms.Normalize(input_cfg["mean"], input_cfg["std"]))
    return transforms.Compose(steps)


class PixelNoise:
    """With probability ``p``, add Gaussian noise of sd ``sd`` to an image tensor in [0, 1]
    and clip it back: queries from noisy cameras or scans. Draws from torch's global generator."""

    def __init__(self, sd: float, p: float = 1.0) -> None:
        self.sd, self.p = sd, p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(())) >= self.p:
            return image
        return (image + self.sd * torch.randn_like(image)).clamp(0, 1)
