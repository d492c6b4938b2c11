"""One training loop for every deep hashing method: the model and its loss stay separate.

Seeded per epoch (a resumed run sees the same batches as an uninterrupted one), a progress
bar with every named loss term, a checkpoint after every epoch and resume from the last one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .checkpoint import save_torch_atomic
from .data import ImageFileDataset, ImageList, collate_skipping_unreadable, image_transform

CHECKPOINT_NAME = "last.pt"


@dataclass
class TrainConfig:
    """Training hyper-parameters; ``optimizer`` is ``"adam"`` or ``"sgd"`` (with ``momentum``)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: str = "adam"
    momentum: float = 0.9
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    checkpoint_dir: str | None = None
    resume: bool = False


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; expected 'adam' or 'sgd'")


def train_model(model, images: ImageList, config: TrainConfig | None = None, loss=None,
                progress: bool = True) -> list[dict]:
    """Train ``model`` on the labelled ``images``; returns one dict of mean loss terms per epoch."""
    config = config or TrainConfig()
    loss = loss if loss is not None else model.default_loss()
    device = resolve_device(config.device)
    model.to(device)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], config)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    dataset = ImageFileDataset(images, image_transform(model.input_cfg))
    steps_per_epoch = math.ceil(len(dataset) / config.batch_size)
    checkpoint = Path(config.checkpoint_dir) / CHECKPOINT_NAME if config.checkpoint_dir else None
    history: list[dict] = []
    start_epoch = 0
    if checkpoint is not None and config.resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, start_epoch = state["history"], state["epoch"]

    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(config.seed * 100_003 + epoch)
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True,
                            num_workers=config.num_workers, collate_fn=collate_skipping_unreadable,
                            generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        model.train()
        sums: dict[str, float] = {}
        seen = 0
        bar = _progress(loader, progress, f"epoch {epoch + 1}/{config.epochs}")
        for step, batch in enumerate(bar):
            if len(batch.labels) < 2:
                continue
            model.on_train_step(epoch * steps_per_epoch + step)
            x, y = batch.images.to(device), batch.labels.to(device)
            with torch.autocast(device.type, enabled=use_amp):
                terms = loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
            n = len(y)
            seen += n
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) * n
            if progress:
                bar.set_postfix({k: f"{v / seen:.4f}" for k, v in sums.items()})
        history.append({"epoch": epoch + 1, **{k: v / max(seen, 1) for k, v in sums.items()}})
        if checkpoint is not None:
            save_torch_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "epoch": epoch + 1, "history": history, "config": asdict(config)}, checkpoint)
    return history


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="batch", leave=False)
