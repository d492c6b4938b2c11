"""The jobs behind the CLI, as plain functions: train an encoder, encode a folder, build an index.

``build(image_dir, out)`` lays out one directory::

    out/model.pt      the trained encoder (method, config, class names, weights)
    out/shards/       HDF5 shards of the folder's codes, features, labels, ids and paths
    out/index/        the saved HashIndex
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from encoders import create_encoder, load_encoder, save_encoder
from encoders.checkpoint import check_made_by, load_trunk
from encoders.data import list_images
from encoders.encode import EncodeReport, encode_files, encode_folder
from encoders.feature_hashing import is_feature_method
from encoders.label_rotations import model_classes
from encoders.training import TrainConfig, resolve_train_config, train_model
from encoders.unsupervised import fit_feature_encoder

from hashindex.code_health import CodeHealth, code_health
from hashindex.index import HashIndex

MODEL_FILE = "model.pt"
SHARDS_DIR = "shards"
INDEX_DIR = "index"


def train_encoder(
    image_dir: "str | os.PathLike",
    out: "str | os.PathLike",
    *,
    method: str = "dlbhc",
    backbone: str = "small_cnn",
    bits: int = 64,
    config: TrainConfig | None = None,
    encoder_kwargs: dict | None = None,
    init_trunk_from: "str | os.PathLike | None" = None,
    progress: bool = True,
) -> Path:
    """Train ``method`` on ``image_dir`` and save it to ``out`` (a file). Supervised methods
    need class sub-folders; unsupervised ones (``encoders.feature_hashing.feature_methods()``)
    take any image folder, never read labels, and are fitted on ``backbone`` features.
    ``init_trunk_from``: an encoder file whose trained backbone this one starts from
    (:func:`encoders.checkpoint.load_trunk`)."""
    config = config or TrainConfig()
    if is_feature_method(method):
        if init_trunk_from is not None:
            raise ValueError(f"{method!r} is fitted on fixed features; init_trunk_from is for trained methods")
        return fit_feature_encoder(image_dir, out, method=method, backbone=backbone, bits=bits, config=config,
                                   encoder_kwargs=encoder_kwargs, progress=progress)
    images = list_images(image_dir, supervised=True)
    if len(images.classes) < 2:
        raise ValueError(f"{image_dir}: a supervised method needs at least 2 class sub-folders, found {len(images.classes)}")
    torch.manual_seed(config.seed)
    model = create_encoder(method, backbone=backbone, bits=bits,
                           num_classes=model_classes(len(images.classes), config.label_rotations), **(encoder_kwargs or {}))
    if init_trunk_from is not None:
        load_trunk(model, init_trunk_from)
    config = resolve_train_config(model, config, num_images=len(images))
    history = train_model(model, images, config, progress=progress)
    health = training_code_health(model, images, config, echo=print if progress else None)
    return save_encoder(model, out, class_names=images.classes,
                        extra={"history": history, "train_config": asdict(config), "code_health": health.as_dict()})


def training_code_health(model, images, config: TrainConfig, echo=None) -> CodeHealth:
    """Encode the training ``images`` (no augmentation) and check their codes; ``echo`` gets
    the summary (and a line when codes are shared only within classes), and collapsed codes
    raise a warning that names the flags that fix them."""
    codes, _, ids, _ = encode_files(model, [path for path, _ in images.samples], batch_size=config.batch_size,
                                    device=config.device)
    health = code_health(codes, model.bits, labels=[images.samples[i][1] for i in ids])
    if echo is not None:
        echo(f"code health on the {health.images} training images: {health.summary()}")
        for line in health.notes():
            echo(line)
    for line in health.warnings():
        warnings.warn(f"collapsed codes: {line}; a bit-balance term (--bit-balance 1, DLBHC's pretrained default) "
                      "spreads near-constant bits, a quantisation term (--quantization 0.1) keeps relaxed bits off 0 "
                      "(README, 'Real photos')", stacklevel=2)
    return health


@dataclass
class BuildResult:
    model_path: Path
    shards_dir: Path
    index_dir: Path
    index: HashIndex
    encode_report: EncodeReport


def build(
    image_dir: "str | os.PathLike",
    out: "str | os.PathLike",
    *,
    model_path: "str | os.PathLike | None" = None,
    spec: str = "flat",
    shard_size: int = 10_000,
    batch_size: int = 64,
    resume: bool = False,
    progress: bool = True,
    **train_kwargs,
) -> BuildResult:
    """Train (unless ``model_path`` is given), encode ``image_dir`` and index it under ``out``.
    Without ``resume`` an ``out`` that already holds a build is refused before anything is trained."""
    out = Path(out)
    if not resume:
        taken = [name for name in (MODEL_FILE, SHARDS_DIR, INDEX_DIR) if (out / name).exists()]
        if taken:
            raise FileExistsError(f"{out} already holds a build ({', '.join(taken)}); continue it with --resume "
                                  "(resume=True) or choose a new output directory")
    out.mkdir(parents=True, exist_ok=True)
    if model_path is None:
        model_path = out / MODEL_FILE
        if not (resume and model_path.exists()):
            train_encoder(image_dir, model_path, progress=progress, **train_kwargs)
    model = load_encoder(model_path)
    report = encode_folder(model, image_dir, out / SHARDS_DIR, batch_size=batch_size, shard_size=shard_size,
                           resume=resume, progress=progress)
    index = index_shards(out / SHARDS_DIR, out / INDEX_DIR, spec=spec, model_path=model_path, progress=progress)
    return BuildResult(Path(model_path), out / SHARDS_DIR, out / INDEX_DIR, index, report)


def index_shards(shards_dir, index_dir, *, spec: str = "flat", model_path=None, progress: bool = True) -> HashIndex:
    """Load a shard store into a ``spec`` index and save it to ``index_dir``; ``model_path`` (the
    encoder recorded for searches) must be the model that encoded the store."""
    index = HashIndex.from_shards(shards_dir, spec=spec, progress=progress)
    if model_path is not None:
        check_made_by(load_encoder(model_path), index.metadata, f"{model_path}: store {shards_dir}")
        index.metadata["model"] = str(Path(model_path).resolve())
    index.save(index_dir)
    return index
