"""Several augmented views of each training image (``TrainConfig.views``): each view draws its
own random transform of the same decoded file, the batch holds every view (view-major rows,
labels repeated), and a loss that compares views (``BaseHashLoss.needs_views``, e.g. the NT-Xent
term of :mod:`encoders.metric_hash`) gets each row's instance id, the image it is a view of."""

from __future__ import annotations

from typing import Callable

import torch
from PIL import Image


class Views:
    """``n`` independent draws of a random ``transform`` of one image, stacked: ``(n, c, h, w)``."""

    def __init__(self, transform: Callable, n: int) -> None:
        if n < 1:
            raise ValueError(f"views must be >= 1, got {n}")
        self.transform, self.n = transform, n

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.stack([self.transform(image) for _ in range(self.n)])


def check_views(views: int, augment: str | None, mixup: float, loss=None) -> None:
    """Refuse ``views`` where it cannot apply: under 1, without an augmentation (every view would
    be the same), with mixup (a blend of two images is a view of neither), or fewer than 2 for a
    ``loss`` that compares views."""
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    if views > 1 and augment is None:
        raise ValueError(f"views={views} needs an augmentation (augment), else every view of an image is the same")
    if views > 1 and mixup:
        raise ValueError(f"views={views} cannot be combined with mixup: a blend of two images is a view of neither")
    if loss is not None and loss.needs_views and views < 2:
        raise ValueError(f"{type(loss).__name__} compares views of each image (a contrastive term); train with "
                         f"views >= 2 (--views 2), got views={views}")


def view_rows(images: torch.Tensor, labels: torch.Tensor, views: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A batch as the model sees it: ``(rows, labels, instances)``. With ``views`` > 1, ``images``
    ``(n, views, c, h, w)`` become view-major rows (view 0 of every image, then view 1, ...), the
    labels repeat and ``instances`` give each row's image (0..n-1); else they pass as they are,
    ``instances`` None."""
    if views == 1:
        return images, labels, None
    instances = torch.arange(len(labels), device=labels.device).repeat(views)
    return images.transpose(0, 1).flatten(0, 1), labels.repeat(views), instances
