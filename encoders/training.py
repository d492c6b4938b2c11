"""One training loop for every deep hashing method: the model and its loss stay separate.

A run is a list of :class:`Stage` s (one by default): each says which named parts of the
model train (the rest are frozen and kept in eval mode), with which loss, optimiser,
learning rate (constant or annealed per step) and weight decay. Bilinear-HashNet's
three-stage schedule is such a list; every other method trains in one stage.

Seeded per epoch (a resumed run sees the same batches as an uninterrupted one), a progress
bar with every named loss term, a checkpoint after every epoch and resume from the last
one, giving the same weights as an uninterrupted run; mixed precision only on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import save_torch_atomic
from .code_fit import CODE_FITS, check_code_fit, fit_codes
from .head_init import HEAD_INITS, init_code_layer
from .label_rotations import check_label_rotations, rotate_batch
from .losses import CODE_TERMS, add_code_terms
from .memory import keep_freed_memory
from .augment import AUGMENTATIONS, train_transform  # noqa: F401 - AUGMENTATIONS: the choices of TrainConfig.augment
from .data import ImageFileDataset, ImageList, collate_skipping_unreadable
from .mixup import mixup_batch
from .views import Views, check_views, view_rows

CHECKPOINT_NAME = "last.pt"
LR_SCHEDULES = ("constant", "cosine", "exponential")


@dataclass
class Stage:
    """One phase of training. ``None`` fields fall back to the :class:`TrainConfig` value
    (``loss=None``: the model's own loss; ``train=None``: every part of the model)."""

    epochs: int
    train: tuple[str, ...] | None = None  #: names from the model's ``module_groups()``
    lr: float | None = None
    lr_end: float | None = None  #: where a non-constant schedule ends
    lr_schedule: str | None = None  #: one of :data:`LR_SCHEDULES`
    weight_decay: float | None = None
    optimizer: str | None = None  #: ``"adam"`` or ``"sgd"``
    loss: str | None = None  #: a name from :data:`encoders.losses.LOSSES`
    name: str = ""


@dataclass
class TrainConfig:
    """Training hyper-parameters; ``optimizer`` is ``"adam"`` or ``"sgd"`` (with ``momentum``).

    ``stages`` overrides the model's default schedule (``model.default_stages(epochs)`` if it
    has one, else a single stage of ``epochs`` epochs); the number of epochs is then their sum.
    ``epochs=None`` trains :data:`DEFAULT_EPOCHS` epochs, or, when a ``step_budget`` applies (the
    pretrained default), about that many optimiser steps: see :func:`epochs_for_budget`.
    ``lr_schedule`` anneals the learning rate per step from ``lr`` to ``lr_end`` (default
    ``lr / 100``) within each stage. ``amp`` enables mixed precision, on CUDA only.
    ``augment`` randomly shifts (and flips) training images, see :func:`train_transform`;
    ``mixup`` > 0 trains on blends of image pairs with ``Beta(mixup, mixup)`` weights, see
    :mod:`encoders.mixup` (0: off).

    The fields left ``None`` are set by :func:`resolve_train_config` from the backbone; a
    backbone with pretrained weights gets :data:`PRETRAINED_RECIPE` (with the method's
    ``HashModel.pretrained_recipe`` changes), one trained from scratch :data:`SCRATCH_RECIPE`:
    ``lr`` (the head's learning rate), ``batch_size`` (the backbone's ``default_batch_size``, else 64),
    ``backbone_lr_scale`` (the backbone's learning rate is ``lr`` times this),
    ``warmup_epochs`` (epochs, counted within ``epochs``, in which only the head trains) and
    ``freeze_early`` (keep the backbone's ``early_layers()`` frozen: less memory and time),
    ``freeze_bn`` (the backbone's batch-norm layers normalise with their stored statistics and
    do not update them; their scale and shift still train) and,
    when ``epochs`` is not given, ``step_budget``; ``head_init`` (one of
    :data:`encoders.head_init.HEAD_INITS`: ``"itq"`` starts the model's ``code_layer()`` from ITQ of
    the training images' features, ``"random_centred"`` moves its random hyperplanes through their mean,
    see :mod:`encoders.head_init`);
    ``quantization``, ``bit_balance`` and ``decorrelation``, the weights of the terms of
    :func:`encoders.losses.code_terms` (0: off). ``code_fit`` (one of
    :data:`encoders.code_fit.CODE_FITS`, not part of the recipe) says how the code layer is set
    after the last epoch, see :func:`encoders.code_fit.fit_codes`; ``label_rotations``: :mod:`encoders.label_rotations`.
    ``views`` > 1 augments each training image that many times, every view in the batch
    (:mod:`encoders.views`).
    """

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 5e-4
    optimizer: str = "adam"
    momentum: float = 0.9
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    checkpoint_dir: str | None = None
    resume: bool = False
    lr_schedule: str = "constant"
    lr_end: float | None = None
    stages: list[Stage] | None = None
    amp: bool = True
    augment: str | None = None  #: one of :data:`~encoders.augment.AUGMENTATIONS` (:mod:`encoders.augment`)
    mixup: float = 0.0  #: Beta parameter of :func:`encoders.mixup.mixup_batch`; 0 = no mixup
    backbone_lr_scale: float | None = None
    warmup_epochs: int | None = None
    freeze_early: bool | None = None
    freeze_bn: bool | None = None
    quantization: float | None = None
    bit_balance: float | None = None
    decorrelation: float | None = None
    step_budget: int | None = None
    head_init: str | None = None
    code_fit: str = "trained"
    label_rotations: bool = False
    views: int = 1

    def __post_init__(self) -> None:
        if self.mixup < 0:
            raise ValueError(f"mixup must be >= 0 (0 = off), got {self.mixup}")
        if self.label_rotations and self.mixup:
            raise ValueError("label_rotations cannot be combined with mixup (a blend has no one rotation); use mixup=0")
        check_views(self.views, self.augment, self.mixup)
        for name in ("epochs", "lr", "backbone_lr_scale", "warmup_epochs", *CODE_TERMS):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.step_budget is not None and self.step_budget < 1:
            raise ValueError(f"step_budget must be >= 1, got {self.step_budget}")
        if self.head_init is not None and self.head_init not in HEAD_INITS:
            raise ValueError(f"unknown head_init {self.head_init!r}; expected one of {', '.join(HEAD_INITS)}")
        if self.code_fit not in CODE_FITS:
            raise ValueError(f"unknown code_fit {self.code_fit!r}; expected one of {', '.join(CODE_FITS)}")
        if self.batch_size is not None and self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}")
        # Accept stages as dicts too (e.g. read back from a checkpoint or a JSON file).
        if self.stages is not None:
            self.stages = [s if isinstance(s, Stage) else Stage(**s) for s in self.stages]


DEFAULT_LR = 1e-3
DEFAULT_EPOCHS = 10
#: Defaults for a backbone with pretrained weights (README, "Real photos"): the backbone learns
#: 10x slower than the head, so that training adapts the ImageNet features instead of
#: overwriting them, and, unless ``epochs`` is given, training stops after about ``step_budget``
#: optimiser steps (longer runs condense each class onto one code or a few); a method changes
#: them with its ``pretrained_recipe``. Chosen on the tuning partitions of ``benchmarks/photos.py``.
PRETRAINED_RECIPE = {"lr": DEFAULT_LR, "backbone_lr_scale": 0.1, "warmup_epochs": 0, "freeze_early": True,
                     "freeze_bn": False, "step_budget": 20, "head_init": "random", **dict.fromkeys(CODE_TERMS, 0.0)}
SCRATCH_RECIPE = {"lr": DEFAULT_LR, "backbone_lr_scale": 1.0, "warmup_epochs": 0, "freeze_early": False,
                  "freeze_bn": False, "head_init": "random", **dict.fromkeys(CODE_TERMS, 0.0)}
DEFAULT_BATCH_SIZE = 64


def has_pretrained_backbone(model) -> bool:
    """Whether ``model``'s backbone was built with pretrained weights (its ``pretrained`` flag)."""
    return bool(getattr(getattr(model, "backbone", None), "pretrained", False))


def epochs_for_budget(step_budget: int, num_images: int, batch_size: int) -> int:
    """Whole epochs closest to ``step_budget`` steps of ``batch_size`` over ``num_images``
    images, at least 1 and at most :data:`DEFAULT_EPOCHS`."""
    steps_per_epoch = math.ceil(num_images / batch_size)
    return min(DEFAULT_EPOCHS, max(1, round(step_budget / steps_per_epoch)))


def resolve_train_config(model, config: TrainConfig | None = None, num_images: int | None = None) -> TrainConfig:
    """``config`` with its ``None`` fields set for ``model`` (see :class:`TrainConfig`); the
    result is what the saved model file records. A model with its own staged schedule
    (``default_stages``) or explicit ``stages`` keeps them: its learning rates are not scaled
    and no warm-up is added, unless asked for. ``epochs`` from a step budget needs
    ``num_images`` (the training images); without it, it stays ``None``."""
    config = config or TrainConfig()
    if has_pretrained_backbone(model):
        recipe = {**PRETRAINED_RECIPE, **model.pretrained_recipe}
    else:
        recipe = dict(SCRATCH_RECIPE)
    if config.stages or model.default_stages(config.epochs or DEFAULT_EPOCHS):
        recipe.update(lr=DEFAULT_LR, backbone_lr_scale=1.0, warmup_epochs=0)
    if config.epochs is not None:
        recipe.pop("step_budget", None)  # an explicit epoch count wins over the budget
    filled = {k: v for k, v in recipe.items() if getattr(config, k) is None}
    if config.batch_size is None:
        filled["batch_size"] = getattr(getattr(model, "backbone", None), "default_batch_size", DEFAULT_BATCH_SIZE)
    budget = filled.get("step_budget", config.step_budget)
    if config.epochs is None and not budget:
        filled["epochs"] = DEFAULT_EPOCHS
    elif config.epochs is None and num_images is not None:
        filled["epochs"] = epochs_for_budget(budget, num_images, filled.get("batch_size", config.batch_size))
    return replace(config, **filled)


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


def resolve_stages(model, config: TrainConfig) -> list[Stage]:
    """The stages to run, with every ``None`` hyper-parameter filled from ``config`` (itself
    resolved for ``model`` first)."""
    config = resolve_train_config(model, config)
    if config.epochs is None:
        raise ValueError("epochs come from the step budget and the number of training images: resolve the config "
                         "with resolve_train_config(model, config, num_images) first")
    if config.stages:
        stages = list(config.stages)
    elif defaults := model.default_stages(config.epochs):
        stages = list(defaults)
    elif config.warmup_epochs:
        if config.warmup_epochs >= config.epochs:
            raise ValueError(f"warmup_epochs ({config.warmup_epochs}) must be fewer than epochs ({config.epochs})")
        head = tuple(name for name in module_groups(model) if name != "backbone")
        stages = [Stage(epochs=config.warmup_epochs, train=head, name="warmup"),
                  Stage(epochs=config.epochs - config.warmup_epochs, name="train")]
    else:
        stages = [Stage(epochs=config.epochs)]
    resolved = []
    for i, s in enumerate(stages):
        if s.epochs < 0:
            raise ValueError(f"stage {i} ({s.name or 'unnamed'}): epochs must be >= 0, got {s.epochs}")
        lr = config.lr if s.lr is None else s.lr
        schedule = s.lr_schedule or config.lr_schedule
        if schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {schedule!r}; expected one of {', '.join(LR_SCHEDULES)}")
        lr_end = s.lr_end if s.lr_end is not None else (config.lr_end if config.lr_end is not None else lr / 100)
        resolved.append(replace(
            s, lr=lr, lr_end=lr_end, lr_schedule=schedule, name=s.name or f"stage{i + 1}",
            weight_decay=config.weight_decay if s.weight_decay is None else s.weight_decay,
            optimizer=s.optimizer or config.optimizer,
        ))
    return resolved


def module_groups(model) -> dict[str, list[nn.Module]]:
    """The model's named parts (:meth:`HashModel.module_groups`), checked: each parameter
    must belong to exactly one part."""
    groups = model.module_groups()
    owner: dict[int, str] = {}
    for name, modules in groups.items():
        for module in modules:
            for p in module.parameters():
                if id(p) in owner and owner[id(p)] != name:
                    raise ValueError(f"parameter in both module groups {owner[id(p)]!r} and {name!r}")
                owner[id(p)] = name
    missing = [n for n, p in model.named_parameters() if id(p) not in owner]
    if missing:
        raise ValueError(f"parameters in no module group: {', '.join(missing[:5])}")
    return groups


def learning_rate(stage: Stage, step: int, total_steps: int) -> float:
    """The learning rate of ``stage`` at its ``step`` (0-based) of ``total_steps``."""
    if stage.lr_schedule == "constant" or total_steps <= 1:
        return stage.lr
    t = min(step, total_steps - 1) / (total_steps - 1)
    if stage.lr_schedule == "cosine":
        return stage.lr_end + (stage.lr - stage.lr_end) * 0.5 * (1 + math.cos(math.pi * t))
    if stage.lr <= 0 or stage.lr_end <= 0:
        raise ValueError(f"an exponential schedule needs positive lr and lr_end, got {stage.lr} and {stage.lr_end}")
    return stage.lr * (stage.lr_end / stage.lr) ** t


@dataclass
class _StageRun:
    """What one stage needs while it runs: trainable modules, frozen ones, optimiser, loss."""

    index: int
    stage: Stage
    frozen: list[nn.Module]
    optimizer: torch.optim.Optimizer
    loss: nn.Module
    scaler: torch.amp.GradScaler


def _start_stage(model, groups, index: int, stage: Stage, config: TrainConfig, loss, use_amp: bool) -> _StageRun:
    from .losses import create_loss

    names = tuple(groups) if stage.train is None else tuple(stage.train)
    unknown = [n for n in names if n not in groups]
    if unknown:
        raise ValueError(f"stage {stage.name!r} trains unknown part(s) {unknown}; model parts: {', '.join(groups)}")
    model.requires_grad_(False)
    trainable = [m for n in names for m in groups[n]]
    for m in trainable:
        m.requires_grad_(True)
    frozen = [m for n, ms in groups.items() if n not in names for m in ms]
    if config.freeze_early and hasattr(model.backbone, "early_layers"):
        # Frozen layers keep no activations for backward: the early, high-resolution ones hold most.
        early = list(model.backbone.early_layers())
        for m in early:
            m.requires_grad_(False)
        frozen += early
    scales = {**model.lr_scales(), "backbone": 1.0 if config.backbone_lr_scale is None else config.backbone_lr_scale}
    part_scale = {id(p): scales.get(name, 1.0) for name, ms in groups.items() for m in ms for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"stage {stage.name!r} has no parameter to train (parts {names})")
    # Each parameter group carries its "lr_scale"; _train_epoch sets lr = schedule x lr_scale.
    by_scale: dict[float, list] = {}
    for p in params:
        by_scale.setdefault(part_scale[id(p)], []).append(p)
    param_groups = [{"params": ps, "lr_scale": s} for s, ps in by_scale.items()]
    opt_config = replace(config, lr=stage.lr, weight_decay=stage.weight_decay, optimizer=stage.optimizer)
    optimizer = make_optimizer(param_groups, opt_config)
    if loss is None:
        loss = model.default_loss() if stage.loss is None else create_loss(stage.loss)
    flag = next((o for o in ("mixup", "label_rotations") if getattr(config, o)), None)
    if flag and not loss.requires_labels:
        raise ValueError(f"stage {stage.name!r}: {flag} needs a supervised loss, {type(loss).__name__} uses no labels")
    check_views(config.views, config.augment, config.mixup, loss)
    return _StageRun(index, stage, frozen, optimizer, loss, torch.amp.GradScaler("cuda", enabled=use_amp))


def train_model(model, images: ImageList, config: TrainConfig | None = None, loss=None,
                progress: bool = True, on_epoch_end: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train ``model`` on the labelled ``images``; returns one dict of mean loss terms per epoch.

    ``loss``, when given, replaces every stage's loss. ``on_epoch_end(epoch, record)`` is
    called after each epoch's checkpoint is written. ``config``'s unset fields are filled by
    :func:`resolve_train_config`.
    """
    with keep_freed_memory():
        return _train_model(model, images, config, loss, progress, on_epoch_end)


def _train_model(model, images: ImageList, config: TrainConfig | None, loss, progress: bool,
                 on_epoch_end: Callable[[int, dict], None] | None) -> list[dict]:
    config = resolve_train_config(model, config, num_images=len(images))
    check_code_fit(model, config.code_fit)
    check_label_rotations(model, images.classes, config.label_rotations)
    stages = resolve_stages(model, config)
    groups = module_groups(model)
    device = resolve_device(config.device)
    model.to(device)
    use_amp = config.amp and device.type == "cuda"
    transform = train_transform(model.input_cfg, config.augment)
    dataset = ImageFileDataset(images, Views(transform, config.views) if config.views > 1 else transform)
    if config.mixup and not images.classes:
        raise ValueError("mixup needs labelled images (class sub-folders)")
    steps_per_epoch = math.ceil(len(dataset) / config.batch_size)
    # Global epoch -> (stage index, epoch within the stage).
    plan = [(i, e) for i, s in enumerate(stages) for e in range(s.epochs)]
    checkpoint = Path(config.checkpoint_dir) / CHECKPOINT_NAME if config.checkpoint_dir else None
    history: list[dict] = []
    start_epoch = 0
    saved = None
    if checkpoint is not None and config.resume and checkpoint.exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        history, start_epoch = saved["history"], saved["epoch"]
    else:
        init_code_layer(model, images, config.head_init, seed=config.seed, batch_size=config.batch_size,
                        device=config.device)

    run: _StageRun | None = None
    try:
        for epoch in range(start_epoch, len(plan)):
            stage_index, epoch_in_stage = plan[epoch]
            if run is None or run.index != stage_index:
                run = _start_stage(model, groups, stage_index, stages[stage_index], config, loss, use_amp)
                # The saved optimiser state belongs to the stage it was saved in; a new stage starts afresh.
                if saved is not None and saved.get("stage") == stage_index and "optimizer" in saved:
                    run.optimizer.load_state_dict(saved["optimizer"])
                    run.scaler.load_state_dict(saved["scaler"])
                saved = None
            record = _train_epoch(model, run, dataset, config, device, use_amp, epoch, epoch_in_stage,
                                  steps_per_epoch, len(plan), len(images.classes), progress)
            history.append(record)
            if checkpoint is not None:
                save_torch_atomic({"model": model.state_dict(), "optimizer": run.optimizer.state_dict(),
                                   "scaler": run.scaler.state_dict(), "stage": stage_index, "epoch": epoch + 1,
                                   "history": history, "config": asdict(config)}, checkpoint)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, record)
    finally:
        model.requires_grad_(True)
    fit_codes(model, images, config.code_fit, seed=config.seed, batch_size=config.batch_size, device=config.device)
    return history


def _train_epoch(model, run: _StageRun, dataset, config: TrainConfig, device, use_amp: bool, epoch: int,
                 epoch_in_stage: int, steps_per_epoch: int, total_epochs: int, num_classes: int,
                 progress: bool) -> dict:
    torch.manual_seed(config.seed * 100_003 + epoch)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True,
                        num_workers=config.num_workers, collate_fn=collate_skipping_unreadable,
                        generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
    # Label rotations draw from their own stream, so that turning them on moves no other draw of the epoch.
    turns = torch.Generator().manual_seed(config.seed * 100_003 + epoch + 2**40) if config.label_rotations else None
    model.train()
    for module in run.frozen:
        module.eval()  # frozen parts keep their batch-norm statistics and drop no units
    if config.freeze_bn:
        for module in model.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    stage_steps = run.stage.epochs * steps_per_epoch
    sums: dict[str, float] = {}
    seen = 0
    correct: int | None = None  # stays None for methods without class scores
    code_weights = {name: getattr(config, name) for name in CODE_TERMS if getattr(config, name)}
    bar = _progress(loader, progress, f"epoch {epoch + 1}/{total_epochs} [{run.stage.name}]")
    for step, batch in enumerate(bar):
        if len(batch.labels) < 2:
            continue
        stage_step = epoch_in_stage * steps_per_epoch + step
        lr = learning_rate(run.stage, stage_step, stage_steps)
        for group in run.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        model.on_train_step(stage_step)
        x, y = batch.images.to(device), batch.labels.to(device)
        x, y, instances = view_rows(x, y, config.views)
        if config.label_rotations:
            x, y = rotate_batch(x, y, turns)
        if config.mixup:
            x, y = mixup_batch(x, y, num_classes, config.mixup)
        with torch.autocast(device.type, enabled=use_amp):
            out = model(x)
            terms = run.loss(out, y, instances=instances)
            if code_weights:
                terms = add_code_terms(terms, model.signed_codes(out.codes), **code_weights)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(terms["loss"]).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        n = len(y)
        seen += n
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach()) * n
        if getattr(out, "logits", None) is not None:  # mixed labels count for their larger share
            target = y if y.ndim == 1 else y.argmax(dim=1)
            correct = (correct or 0) + int((out.logits.detach().argmax(dim=1) == target).sum())
        if progress:
            bar.set_postfix({k: f"{v / seen:.4f}" for k, v in sums.items()})
    record = {"epoch": epoch + 1, "stage": run.stage.name, "lr": lr if seen else run.stage.lr,
              **{k: v / max(seen, 1) for k, v in sums.items()}}
    if correct is not None and seen:
        record["train_accuracy"] = correct / seen
    return record


def training_summary(history: list[dict]) -> str:
    """One line on a finished training: epochs, the last epoch's loss terms, train accuracy if any."""
    if not history:
        return "trained 0 epochs"
    last = history[-1]
    terms = [k for k in last if k not in ("epoch", "stage", "lr", "train_accuracy", "loss")]
    line = f"trained {last['epoch']} epoch(s): final loss {last.get('loss', float('nan')):.4f}"
    if terms:
        line += " (" + ", ".join(f"{k} {last[k]:.4f}" for k in terms) + ")"
    if "train_accuracy" in last:
        line += f", train accuracy {last['train_accuracy']:.4f}"
    return line


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="batch", disable=None)  # silent when not a terminal
