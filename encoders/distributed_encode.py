"""Encode an image folder on a pool of Ray workers into one shard store, resumably.

The folder's sorted image list (ids = positions, as :func:`encoders.encode.encode_folder`
numbers them) is cut into chunks of ``chunk_size`` consecutive ids. Each chunk is one Ray
task that runs the ordinary ``encode_folder`` restricted to its ids, into its own complete
sub-store; the driver moves finished chunks' shard files into the final store, in chunk
order, and rewrites the manifest atomically after each chunk. So the final store holds
exactly what a single-process encode writes (same ids, labels, codes, features, paths, same
skipped files), only cut into shards at chunk boundaries as well.

Layout while running (``OUT`` is the final store, valid at every moment: it holds the
chunks merged so far)::

    OUT/manifest.json, OUT/part-*.h5          merged chunks 0 .. m-1
    OUT/.ray-encode/plan.json                 the run's parameters and the folder's fingerprint
    OUT/.ray-encode/chunk-00007/              chunk 7's own store (encode_folder, resume=True)
    OUT/.ray-encode/chunk-00007/worker.json   pid and host of the worker encoding it
    OUT/.ray-encode/chunk-00007/DONE          written once the chunk is complete

Faults: a task whose worker dies is retried by Ray (``max_retries``); the retry resumes its
chunk after the chunk's last complete shard. When retries run out the other chunks still
finish and are merged, then :class:`EncodeChunkError` names the failed chunks; rerunning
with ``resume=True`` encodes only chunks without ``DONE`` (resuming each from its complete
shards) and merges the rest. Every chunk is checked before it counts as done: each id of
its range is either stored or listed as skipped.

Scaling: chunks are independent, so throughput grows with workers until the shared file
system (image reads, shard writes) or the driver's merge (a rename per shard) limits it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from hashindex.durable import write_json_atomic
from hashindex.store import (MANIFEST, ShardError, ShardReader, StoreInfo, merge_store, read_store_info,
                             write_store_info)

from .data import list_images, listing_fingerprint
from .encode import SKIPPED_REPORT, encode_folder

WORK_DIR = ".ray-encode"
PLAN = "plan.json"
DONE = "DONE"
CLAIM = "worker.json"


class EncodeChunkError(RuntimeError):
    """Some chunks failed after their retries; the others are merged. Rerun with ``resume=True``."""

    def __init__(self, message: str, failed: dict[int, str]) -> None:
        super().__init__(message)
        self.failed = failed  #: chunk number -> error text


@dataclass
class RayEncodeReport:
    """What a distributed encode did."""

    out_dir: Path
    num_images: int
    num_chunks: int
    encoded_chunks: list[int] = field(default_factory=list)  #: chunks encoded (or finished) by this run
    reused_chunks: list[int] = field(default_factory=list)  #: chunks already complete before this run
    encoded: int = 0  #: records in the final store
    skipped: list[dict] = field(default_factory=list)  #: {"path", "id", "reason"} per unreadable file
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.seconds if self.seconds else 0.0


def encode_folder_ray(
    model,
    image_dir: "str | os.PathLike",
    out_dir: "str | os.PathLike",
    *,
    num_workers: int = 2,
    chunk_size: int | None = None,
    batch_size: int = 64,
    shard_size: int = 10_000,
    feature_dtype: str = "float16",
    supervised: bool = False,
    resume: bool = False,
    device: str = "auto",
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    max_retries: int = 3,
    address: str | None = None,
    progress: bool = True,
) -> RayEncodeReport:
    """Encode ``image_dir`` into the shard store ``out_dir`` on ``num_workers`` Ray workers.

    ``model`` is an encoder file (each worker loads it; preferred on a cluster) or a model
    object (shipped once through the object store). ``chunk_size`` (default ``shard_size``)
    is rounded up to a multiple of ``batch_size`` so every batch holds the same images as in
    a single-process encode, which makes the codes bit-identical. Ray is initialised with
    :func:`hashindex.cluster.connect` (``address`` joins a cluster) unless it already is; every
    node must see ``image_dir`` and ``out_dir`` at the same paths.
    """
    from hashindex.cluster import require_ray
    from hashindex.cluster import connect

    ray = require_ray()
    started = time.perf_counter()
    connect(address)
    out_dir = Path(out_dir).resolve()
    images = list_images(image_dir, supervised=supervised)
    chunk_size = _round_up(chunk_size or shard_size, batch_size)
    num_chunks = -(-len(images) // chunk_size)
    loaded = _load_model(model)
    plan = {"image_root": str(images.root.resolve()), "num_images": len(images),
            "fingerprint": listing_fingerprint(images), "supervised": supervised, "chunk_size": chunk_size,
            "num_chunks": num_chunks, "batch_size": batch_size, "shard_size": shard_size,
            "feature_dtype": feature_dtype, "bits": loaded.bits, "feature_dim": loaded.feature_dim,
            "encoder": loaded.method}
    work = out_dir / WORK_DIR
    merged = _prepare(out_dir, work, plan, images.classes, resume)
    report = RayEncodeReport(out_dir=out_dir, num_images=len(images), num_chunks=num_chunks)

    model_arg = str(Path(model).resolve()) if isinstance(model, (str, os.PathLike)) else ray.put(loaded)
    task = ray.remote(_encode_chunk).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                             max_retries=max_retries)
    todo = [c for c in range(merged, num_chunks) if not (work / _chunk_name(c) / DONE).exists()]
    report.reused_chunks = [c for c in range(num_chunks) if c not in todo]
    encode_kwargs = {"batch_size": batch_size, "shard_size": shard_size, "feature_dtype": feature_dtype,
                     "device": device}
    threads = max(1, int(cpus_per_worker))
    pending: dict = {}
    failed: dict[int, str] = {}
    bar = _progress(num_chunks, len(report.reused_chunks), progress)
    queue = list(todo)
    while queue or pending:
        while queue and len(pending) < num_workers:
            c = queue.pop(0)
            ref = task.remote(model_arg, plan, str(work / _chunk_name(c)), c, encode_kwargs, threads)
            pending[ref] = c
        ready, _ = ray.wait(list(pending), num_returns=1)
        c = pending.pop(ready[0])
        try:
            ray.get(ready[0])
            report.encoded_chunks.append(c)
        except (ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.RayActorError, ray.exceptions.NodeDiedError) as exc:
            failed[c] = " ".join(str(exc).split())[:500]
        if bar is not None:
            bar.update(1)
        merged = _merge_ready(out_dir, work, merged, num_chunks)
    if bar is not None:
        bar.close()
    if failed:
        raise EncodeChunkError(
            f"{len(failed)} chunk(s) of {images.root} failed after {max_retries} retries: "
            + "; ".join(f"chunk {c} (ids {c * chunk_size}..{min(len(images), (c + 1) * chunk_size) - 1}): {e}"
                        for c, e in sorted(failed.items()))
            + f". The {merged} chunk(s) before the first failure are in {out_dir}; rerun with resume=True "
              "to encode only what is missing", failed)
    report.skipped = _finish(out_dir, work, num_chunks)
    report.encoded = read_store_info(out_dir).num_records
    report.seconds = time.perf_counter() - started
    return report


# ---------------------------------------------------------------------------- worker side
_MODEL_CACHE: dict = {}
_LISTING_CACHE: dict = {}


def _encode_chunk(model_arg, plan: dict, chunk_dir: str, chunk: int, encode_kwargs: dict, threads: int) -> dict:
    """One Ray task: encode the ids of ``chunk`` into ``chunk_dir`` (resuming), check it, mark it done."""
    import torch

    torch.set_num_threads(threads)
    chunk_dir = Path(chunk_dir)
    chunk_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(chunk_dir / CLAIM, {"pid": os.getpid(), "host": socket.gethostname(), "chunk": chunk,
                                          "started": time.time()})
    model = _worker_model(model_arg)
    images = _worker_listing(plan)
    start = chunk * plan["chunk_size"]
    stop = min(plan["num_images"], start + plan["chunk_size"])
    encode_folder(model, images, chunk_dir, ids=range(start, stop), resume=True, progress=False,
                  **encode_kwargs)
    skipped = _read_skipped(chunk_dir)
    stored = _stored_ids(chunk_dir)
    missing = sorted(set(range(start, stop)) - stored - {s["id"] for s in skipped})
    if missing or not stored.union(s["id"] for s in skipped) <= set(range(start, stop)):
        raise ShardError(f"{chunk_dir}: chunk {chunk} is incomplete after encoding: ids {missing[:5]} "
                         "neither stored nor skipped")
    done = {"chunk": chunk, "start": start, "stop": stop, "encoded": len(stored), "skipped": skipped}
    write_json_atomic(chunk_dir / DONE, done)
    return {"chunk": chunk, "encoded": len(stored), "skipped": len(skipped)}


def _worker_model(model_arg):
    if not isinstance(model_arg, str):
        return model_arg  # a model object, resolved from the object store by Ray
    from . import load_encoder

    key = (model_arg, os.stat(model_arg).st_mtime_ns)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = load_encoder(model_arg)
    return _MODEL_CACHE[key]


def _worker_listing(plan: dict):
    """The folder listing, cached per worker process and checked against the driver's."""
    key = (plan["image_root"], plan["supervised"], plan["fingerprint"])
    if key not in _LISTING_CACHE:
        images = list_images(plan["image_root"], supervised=plan["supervised"])
        if listing_fingerprint(images) != plan["fingerprint"]:
            raise RuntimeError(f"{plan['image_root']}: this worker lists different images than the driver "
                               f"({len(images)} vs {plan['num_images']}); the folder changed or is not the "
                               "same on every node")
        _LISTING_CACHE.clear()
        _LISTING_CACHE[key] = images
    return _LISTING_CACHE[key]


def _read_skipped(store_dir: Path) -> list[dict]:
    path = store_dir / SKIPPED_REPORT
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(entries, key=lambda e: e["id"])


def _stored_ids(store_dir: Path) -> set[int]:
    return set(ShardReader(store_dir).read(["ids"])["ids"].tolist())


# ---------------------------------------------------------------------------- driver side
def _prepare(out_dir: Path, work: Path, plan: dict, class_names: list[str], resume: bool) -> int:
    """Create (or, resuming, check) the final store and the plan; return the chunks merged so far."""
    manifest, plan_file = out_dir / MANIFEST, work / PLAN
    if not manifest.exists():
        work.mkdir(parents=True, exist_ok=True)
        state = {"merged_chunks": 0, "num_chunks": plan["num_chunks"], "chunk_size": plan["chunk_size"]}
        info = StoreInfo(bits=plan["bits"], feature_dim=plan["feature_dim"], feature_dtype=plan["feature_dtype"],
                         class_names=list(class_names), metadata={"ray_encode": state})
        write_store_info(out_dir, info)
        write_json_atomic(plan_file, plan)
        return 0
    if not resume:
        raise FileExistsError(f"{out_dir} already holds a shard store; pass resume=True to continue an "
                              "interrupted distributed encode, or choose an empty directory")
    state = read_store_info(out_dir).metadata.get("ray_encode")
    if state is None:
        raise FileExistsError(f"{out_dir} holds a shard store not written by a distributed encode")
    if state.get("finished"):
        return state["merged_chunks"]
    if plan_file.exists():
        found = json.loads(plan_file.read_text(encoding="utf-8"))
        changed = {k: (found.get(k), v) for k, v in plan.items() if found.get(k) != v}
        if changed:
            raise ValueError(f"{plan_file}: cannot resume, this run differs from the interrupted one: "
                             + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items()))
    elif state["merged_chunks"]:
        raise ShardError(f"{plan_file} is missing although {state['merged_chunks']} chunk(s) are merged")
    else:  # interrupted between the manifest and the plan
        write_json_atomic(plan_file, plan)
    return state["merged_chunks"]


def _merge_ready(out_dir: Path, work: Path, merged: int, num_chunks: int) -> int:
    """Move the shards of every finished chunk that follows the merged prefix into the store."""
    while merged < num_chunks and (work / _chunk_name(merged) / DONE).exists():
        _merge_chunk(out_dir, work / _chunk_name(merged), merged)
        merged += 1
    return merged


def _merge_chunk(out_dir: Path, chunk_dir: Path, chunk: int) -> None:
    """Merge a chunk's store into the final one (:func:`hashindex.store.merge_store`, idempotent),
    recording in the same manifest write that the chunk is merged."""
    metadata = read_store_info(out_dir).metadata
    chunk_metadata = read_store_info(chunk_dir).metadata
    if not metadata.get("image_root") and chunk_metadata:
        metadata = {**chunk_metadata, "ray_encode": metadata["ray_encode"]}
    metadata["ray_encode"]["merged_chunks"] = chunk + 1
    merge_store(out_dir, chunk_dir, metadata,
                hint=f"; chunk {chunk} must be re-encoded (delete {chunk_dir} and resume)")


def _finish(out_dir: Path, work: Path, num_chunks: int) -> list[dict]:
    """Write the store's skipped-file report from the chunks', mark the encode finished, clean up."""
    info = read_store_info(out_dir)
    state = info.metadata["ray_encode"]
    if state.get("finished"):
        return _read_skipped(out_dir)
    skipped = []
    for c in range(num_chunks):
        skipped.extend(json.loads((work / _chunk_name(c) / DONE).read_text(encoding="utf-8"))["skipped"])
    report = out_dir / SKIPPED_REPORT
    if skipped:
        tmp = report.with_name(report.name + ".tmp")
        tmp.write_text("".join(json.dumps(s) + "\n" for s in skipped), encoding="utf-8")
        os.replace(tmp, report)
    elif report.exists():
        report.unlink()
    state["finished"] = True
    write_store_info(out_dir, info)
    shutil.rmtree(work, ignore_errors=True)
    return skipped


def _load_model(model):
    if isinstance(model, (str, os.PathLike)):
        from . import load_encoder

        return load_encoder(model)
    return model


def _round_up(value: int, multiple: int) -> int:
    if value <= 0 or multiple <= 0:
        raise ValueError(f"chunk_size and batch_size must be positive, got {value} and {multiple}")
    return -(-value // multiple) * multiple


def _chunk_name(chunk: int) -> str:
    return f"chunk-{chunk:05d}"


def _progress(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="encoding chunks", unit="chunk", disable=None)
