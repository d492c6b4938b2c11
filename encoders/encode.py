"""Encode an image folder into HDF5 shards: packed codes, F7 features, labels, ids, paths.

A record's id is the position of its file in the sorted listing of the folder
(:func:`encoders.data.list_images`), so ids are stable across runs, resumes and
distributed encodes. Unreadable files are skipped, counted and listed in
``skipped.jsonl`` beside the shards (one JSON line per file: path, id, reason), written
as they are met so that a killed encode keeps them; a resume keeps the lines of files
before its restart point and retries (and re-lists) the others, so each is listed once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from torch.utils.data import DataLoader

from hashindex.durable import replace_durably
from hashindex.store import MANIFEST, ShardWriter, read_store_info

from .checkpoint import encoder_identity, portable_config
from .data import (ImageFileDataset, ImageList, collate_skipping_unreadable, image_transform, list_images,
                   listing_fingerprint)
from .memory import keep_freed_memory
from .training import resolve_device

SKIPPED_REPORT = "skipped.jsonl"


@dataclass
class EncodeReport:
    """What an encode did: records written now, files skipped, where the shards are."""

    out_dir: Path
    encoded: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  #: (path, reason)
    resumed_after: int = 0  #: records already in the store when this run started

    @property
    def total(self) -> int:
        return self.resumed_after + self.encoded


def encode_folder(
    model,
    image_dir: "str | os.PathLike | ImageList",
    out_dir: "str | os.PathLike",
    *,
    batch_size: int = 64,
    shard_size: int = 10_000,
    num_workers: int = 0,
    resume: bool = False,
    device: str = "auto",
    feature_dtype: str = "float16",
    supervised: bool = False,
    ids: "list[int] | None" = None,
    progress: bool = True,
) -> EncodeReport:
    """Encode every image of ``image_dir`` with ``model`` into a shard store at ``out_dir``.

    With ``resume=True`` an interrupted encode continues after the last complete shard; it is
    refused (``ValueError``) when the store was started by another model or from another listing
    of the folder. A resume with nothing left to do writes nothing.
    Labels come from the folder's class sub-folders (``-1`` if it has none), so classes
    the model never saw are indexed with their labels too. ``ids`` restricts the encode
    to those file positions (used by distributed encoding).
    """
    images = image_dir if isinstance(image_dir, ImageList) else list_images(image_dir, supervised=supervised)
    out_dir = Path(out_dir)
    job = {"encoder_id": encoder_identity(model), "listing": listing_fingerprint(images), "num_images": len(images)}
    if resume and (out_dir / MANIFEST).exists():
        _check_same_job(read_store_info(out_dir).metadata, job, images.root, out_dir)
    writer = ShardWriter(
        out_dir, model.bits, feature_dim=model.feature_dim, feature_dtype=feature_dtype,
        class_names=images.classes, shard_size=shard_size, resume=resume,
        metadata={"image_root": str(images.root.resolve()), "encoder": model.method,
                  "encoder_config": portable_config(model.config), **job},
    )
    already = writer.num_records
    todo = list(range(len(images))) if ids is None else sorted(ids)
    todo = [i for i in todo if i >= writer.info.next_id]
    if not todo:
        writer.close()
        return EncodeReport(out_dir=out_dir, encoded=0, resumed_after=already)
    dev = resolve_device(device)
    model.to(dev).eval()
    loader = DataLoader(ImageFileDataset(images, image_transform(model.input_cfg), ids=todo),
                        batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skipping_unreadable)
    report = EncodeReport(out_dir=out_dir, encoded=0, resumed_after=already)
    bar = loader
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(loader, desc=f"encoding {images.root.name}", unit="batch", disable=None)
    skipped_file = _restart_skipped_report(out_dir, writer.info.next_id)
    with writer, open(skipped_file, "a", encoding="utf-8") as skipped_log, keep_freed_memory():
        for batch in bar:
            for image_id, reason in batch.failed:
                report.skipped.append((images.samples[image_id][0], reason))
                skipped_log.write(json.dumps({"path": images.samples[image_id][0], "id": int(image_id),
                                              "reason": reason}) + "\n")
            skipped_log.flush()  # before the batch's records can complete a shard
            if len(batch.ids) == 0:
                continue
            codes, features = model.encode(batch.images.to(dev))
            batch_ids = batch.ids.numpy()
            writer.add(codes, labels=batch.labels.numpy(), features=features, ids=batch_ids,
                       paths=[os.path.relpath(images.samples[i][0], images.root) for i in batch_ids])
            report.encoded += len(batch_ids)
    if skipped_file.stat().st_size == 0:
        skipped_file.unlink()
    return report


def _check_same_job(recorded: dict, job: dict, image_dir: Path, out_dir: Path) -> None:
    """Refuse to resume a store with another model, or after the folder's listing changed (the
    ids of the files after a change would shift). Stores written before these were recorded pass."""
    if recorded.get("encoder_id", job["encoder_id"]) != job["encoder_id"]:
        raise ValueError(f"{out_dir}: cannot resume, the store holds codes of another model (identity "
                         f"{recorded['encoder_id'][:12]}, this encoder is {job['encoder_id'][:12]}); resume it with "
                         "the encoder file it was started with, or encode into a new directory")
    if recorded.get("listing", job["listing"]) != job["listing"]:
        raise ValueError(f"{image_dir}: the folder changed since {out_dir} was started ({recorded.get('num_images')} "
                         f"images then, {job['num_images']} now), so a resume would mix up ids; encode new images "
                         "into the store with `hashindex add`, or encode the folder into a new directory")


def _restart_skipped_report(out_dir: Path, next_id: int) -> Path:
    """Keep the report lines of files with id < ``next_id`` (behind the last complete shard, so
    final); drop the others, and any line torn by a crash: this run retries those files."""
    path = out_dir / SKIPPED_REPORT
    kept = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and int(entry.get("id", -1)) < next_id:
                kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    replace_durably(tmp, path)
    return path


def encode_files(model, paths: "list[str | os.PathLike]", *, batch_size: int = 64, device: str = "auto"):
    """Encode individual image files (e.g. queries). Returns ``(codes, features, encoded, failed)``:
    packed codes and F7 features of the readable files, their positions in ``paths``, and
    ``(path, reason)`` for each unreadable one."""
    import numpy as np

    images = ImageList(root=Path("."), samples=[(os.fspath(p), -1) for p in paths])
    dev = resolve_device(device)
    model.to(dev).eval()
    loader = DataLoader(ImageFileDataset(images, image_transform(model.input_cfg)), batch_size=batch_size,
                        collate_fn=collate_skipping_unreadable)
    codes, features, encoded, failed = [], [], [], []
    with keep_freed_memory():
        for batch in loader:
            failed.extend((images.samples[i][0], reason) for i, reason in batch.failed)
            if len(batch.ids):
                c, f = model.encode(batch.images.to(dev))
                codes.append(c)
                features.append(f)
                encoded.extend(batch.ids.tolist())
    if not codes:
        return (np.empty((0, model.bits // 8), np.uint8), np.empty((0, model.feature_dim), np.float32),
                encoded, failed)
    return np.concatenate(codes), np.concatenate(features), encoded, failed


def encode_images(model, images: "list[Image.Image]", *, device: str = "auto"):
    """Encode decoded RGB images (e.g. uploads): ``(codes, features)``, one row per image."""
    import torch

    dev = resolve_device(device)
    model.to(dev).eval()
    transform = image_transform(model.input_cfg)
    with keep_freed_memory():
        return model.encode(torch.stack([transform(im) for im in images]).to(dev))
