"""Random sequences of encode / kill / add-files / resume / save / load (issue #14, hypothesis).

The invariant after every step: a store that an encode called complete holds every image of
the folder exactly once, with the codes of the store's one model (those of an uninterrupted
encode of the folder), or the encode refused with a ``ValueError``; and the last index that was
saved always loads, intact. Kills are ``os._exit`` in a forked child at a random point of an
encode or a save: no ``finally``, no ``__exit__``, as ``kill -9`` leaves it.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encoders import create_encoder
from encoders.checkpoint import encoder_identity
from encoders.encode import encode_folder
from hashindex import HashIndex, ShardError, ShardReader
from hashindex.datasets import load_digits_images, write_image_folder

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.slow  # forks and encodes: about a minute

SHARD, BATCH = 8, 4
STEPS = st.lists(st.tuples(st.sampled_from(["encode", "kill-encode", "add-files", "save", "kill-save", "load"]),
                           st.integers(0, 10_000)), min_size=3, max_size=7)


def _model():
    torch.manual_seed(0)
    return create_encoder("dlbhc", backbone="small_cnn", bits=16, num_classes=3, width=4, feature_dim=8,
                          input_size=16).eval()


def _encode(model, folder: Path, store: Path):
    return encode_folder(model, folder, store, shard_size=SHARD, batch_size=BATCH, resume=True, device="cpu",
                         progress=False)


def _die_at(point: int, steps) -> None:
    """Make this (forked) process die just before the ``point``-th call of any of ``steps``
    (``(module or class, name)`` pairs): a batch append, a shard rename, a manifest or pointer write."""
    calls = [0]
    for owner, name in steps:
        original = getattr(owner, name)

        def dying(*args, _original=original, **kwargs):
            calls[0] += 1
            if calls[0] == point:
                os._exit(9)
            return _original(*args, **kwargs)

        setattr(owner, name, dying)


def _child_encode(folder, store, point):
    import hashindex.store.writer as writer

    torch.set_num_threads(1)
    _die_at(point, [(writer.ShardWriter, "add"), (writer, "replace_durably"), (writer, "write_json_atomic")])
    _encode(_model(), Path(folder), Path(store))
    os._exit(0)


def _child_save(store, index_dir, point):
    import hashindex.persistence as persistence_mod
    import hashindex.index_dir as index_dir_mod

    _die_at(point, [(index_dir_mod, "replace_durably"), (index_dir_mod, "write_json_atomic"),
                    (persistence_mod, "write_json_atomic")])
    HashIndex.from_shards(store, progress=False).save(index_dir)
    os._exit(0)


def _run_forked(target, *args) -> int:
    proc = multiprocessing.get_context("fork").Process(target=target, args=args)
    proc.start()
    proc.join(120)
    assert proc.exitcode is not None, "the forked step hung"
    return proc.exitcode


def _assert_store_matches_folder(store: Path, folder: Path, model, scratch: Path) -> None:
    """Equal to an uninterrupted encode of the folder as it is now, by the same model."""
    reference = scratch / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    _encode(model, folder, reference)
    got, want = ShardReader(store), ShardReader(reference)
    assert got.info.metadata["encoder_id"] == encoder_identity(model)
    x, y = got.read(("codes", "ids", "paths")), want.read(("codes", "ids", "paths"))
    assert x["paths"] == y["paths"] and len(set(x["paths"])) == len(x["paths"])  # each image exactly once
    np.testing.assert_array_equal(x["ids"], y["ids"])
    np.testing.assert_array_equal(x["codes"], y["codes"])
    assert [s["count"] for s in got.info.shards] == [s["count"] for s in want.info.shards]


def _has_shards(store: Path) -> bool:
    """Whether the store holds a complete shard to index. A kill before the first manifest write
    leaves a folder that is no store: indexing it must fail with one clear error, not read garbage."""
    if store.exists() and not (store / "manifest.json").exists():
        with pytest.raises(ShardError, match="not a hashindex shard store"):
            HashIndex.from_shards(store, progress=False)
        return False
    return store.exists() and bool(ShardReader(store).info.shards)


@pytest.fixture(scope="module")
def digits_small():
    images, labels = load_digits_images(size=16)
    rows = np.concatenate([np.flatnonzero(labels == c)[:14] for c in range(3)])
    return images[rows], labels[rows], images[np.flatnonzero(labels == 3)[:30]]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(steps=STEPS)
@example(steps=[("kill-encode", 4), ("save", 0), ("add-files", 1), ("encode", 0), ("kill-save", 2), ("load", 0),
                ("kill-encode", 7), ("encode", 0)])
@example(steps=[("kill-encode", 0), ("save", 0), ("encode", 0)])  # killed before the store had a manifest
def test_random_sequences_keep_the_invariant(digits_small, steps):
    torch.set_num_threads(1)
    images, labels, spare = digits_small
    model = _model()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = write_image_folder(images, labels, tmp / "images")
        store, index_dir = tmp / "store", tmp / "index"
        saved: HashIndex | None = None  # the last index a save completed
        added = 0
        complete = False  # whether the last encode (of the folder as it is now) completed
        for action, seed in steps:
            if action == "encode":
                try:
                    _encode(model, folder, store)
                except ValueError as exc:  # refused: the folder changed since the store was started
                    assert "the folder changed" in str(exc) and "hashindex add" in str(exc)
                    shutil.rmtree(store)  # the user's way out: encode the folder anew
                    _encode(model, folder, store)
                complete = True
                _assert_store_matches_folder(store, folder, model, tmp)
            elif action == "kill-encode":
                code = _run_forked(_child_encode, folder, store, 1 + seed % 12)
                assert code in (0, 9, 1)  # 1: the child refused (changed folder) with a ValueError
                complete = complete and code == 0
            elif action == "add-files":  # new images sort after a class's others: later ids shift
                for j in range(1 + seed % 3):
                    Image.fromarray(spare[added % len(spare)]).save(folder / str(seed % 3) / f"n{added:03d}.png")
                    added += 1
                complete = False
            elif action == "save" and _has_shards(store):
                saved = HashIndex.from_shards(store, progress=False)
                saved.save(index_dir)
            elif action == "kill-save" and _has_shards(store):
                attempted = HashIndex.from_shards(store, progress=False)
                assert _run_forked(_child_save, store, index_dir, 1 + seed % 5) in (0, 9)
                if saved is None and not (index_dir / "CURRENT").exists():
                    continue
                loaded = HashIndex.load(index_dir)  # the previous index, or the new one if it was published
                saved = attempted if saved is None or not np.array_equal(loaded.ids, saved.ids) else saved
            if saved is not None:  # after every step: the last saved index loads, intact
                loaded = HashIndex.load(index_dir)
                np.testing.assert_array_equal(loaded.ids, saved.ids)
                np.testing.assert_array_equal(loaded.labels, saved.labels)
                np.testing.assert_array_equal(loaded.features, saved.features)
            if complete:
                assert len(ShardReader(store)) == sum(1 for _ in folder.rglob("*.png"))
