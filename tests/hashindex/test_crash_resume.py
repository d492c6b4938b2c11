"""Crash safety: kill -9 a real build at random moments, resume, and get exactly the records of an
uninterrupted run; a crash in the middle of ``HashIndex.save`` leaves the previous index loadable.

The kill points are seeded: the external kills land a random delay after the N-th shard file
appears; the injected faults SIGKILL the process itself before or after its N-th rename / fsync /
batch append, which are the moments where a torn write could lose or duplicate records.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from encoders.encode import SKIPPED_REPORT
from hashindex import HashIndex, ShardReader

SHARD_SIZE = 16
BATCH = 8
FIELDS = ("codes", "labels", "ids", "features", "paths")
CORRUPT = {"1/img_zero.png": b"", "2/img_text.png": b"not an image", "3/img_trunc.png": None}


def _shard_files(shards: Path) -> list[str]:
    return sorted(p.name for p in shards.glob("part-*.h5"))


@pytest.fixture(scope="module")
def job(tmp_path_factory, digits16_folder, save_tiny_encoder):
    """An image folder with three unreadable files, a tiny saved encoder, and an uninterrupted build."""
    root = tmp_path_factory.mktemp("crash")
    folder = Path(shutil.copytree(digits16_folder, root / "images"))
    good_png = (folder / "0" / "img000000.png").read_bytes()
    for name, payload in CORRUPT.items():
        (folder / name).write_bytes(good_png[: len(good_png) // 2] if payload is None else payload)
    save_tiny_encoder(root / "model.pt", 0)
    ref = root / "reference"
    proc = subprocess.Popen(_build_cmd(folder, root / "model.pt", ref, resume=False), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    appeared = {}  # shard count -> when it was first seen: the pace of the encode, for the kill delays
    while proc.poll() is None:
        count = len(_shard_files(ref / "shards")) if (ref / "shards").is_dir() else 0
        appeared.setdefault(count, time.monotonic())
        time.sleep(0.001)
    assert proc.wait() == 0, proc.stderr.read()
    seen = sorted(c for c in appeared if c)
    per_shard = (appeared[seen[-1]] - appeared[seen[0]]) / max(1, seen[-1] - seen[0])
    return {"root": root, "folder": folder, "model": root / "model.pt", "ref": ref, "per_shard": per_shard}


def _build_cmd(folder, model, out, resume=True) -> list[str]:
    return [sys.executable, "-m", "hashapp.cli", "--threads", "1", "build", str(folder), "--model", str(model),
            "--out", str(out), "--shard-size", str(SHARD_SIZE), "--batch-size", str(BATCH)] + (["--resume"] if resume
                                                                                              else [])


def _assert_same_store(got: Path, want: Path) -> None:
    a, b = ShardReader(got), ShardReader(want)
    # Same shard layout: a resume continues after the last complete shard, so every shard but the
    # last holds exactly SHARD_SIZE records, as in the uninterrupted run.
    assert [(s["count"], s["first_id"]) for s in a.info.shards] == [(s["count"], s["first_id"]) for s in b.info.shards]
    x, y = a.read(FIELDS), b.read(FIELDS)
    for name in ("codes", "labels", "ids", "paths"):
        np.testing.assert_array_equal(np.asarray(x[name]), np.asarray(y[name]), err_msg=name)
    np.testing.assert_allclose(x["features"], y["features"], atol=1e-2)
    assert len(np.unique(x["ids"])) == len(x["ids"])  # none duplicated
    assert not list(got.glob("*.tmp")), "temporary files left behind"


def _skipped(shards: Path, folder: Path) -> list[str]:
    """The skip report's files, relative to the image folder (duplicates kept)."""
    lines = (shards / SKIPPED_REPORT).read_text().splitlines()
    return sorted(os.path.relpath(json.loads(line)["path"], folder) for line in lines)


@pytest.mark.slow
def test_reference_build_lists_every_readable_image_once(job):
    shards = job["ref"] / "shards"
    data = ShardReader(shards).read(("ids", "paths"))
    listing = sorted(str(p.relative_to(job["folder"])) for p in job["folder"].rglob("*.png"))
    readable = [p for p in listing if p not in CORRUPT]
    assert data["paths"] == readable
    np.testing.assert_array_equal(data["ids"], [listing.index(p) for p in readable])  # id = position in listing
    assert _skipped(shards, job["folder"]) == sorted(CORRUPT)


@pytest.mark.slow
def test_build_survives_repeated_kill_9(job, tmp_path):
    """`hashindex build --resume`, killed with SIGKILL a seeded random delay after the N-th shard."""
    rng = np.random.default_rng(7)
    out = tmp_path / "run"
    shards = out / "shards"
    per_shard = job["per_shard"]
    last_target = len(_shard_files(job["ref"] / "shards")) - 3  # leave time to kill before the end
    kills = 0
    for attempt in range(12):
        target = min(last_target, len(_shard_files(shards)) + int(rng.integers(1, 4)))
        delay = float(rng.uniform(0, 2 * per_shard))
        proc = subprocess.Popen(_build_cmd(job["folder"], job["model"], out), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        while proc.poll() is None and (not shards.is_dir() or len(_shard_files(shards)) < target):
            time.sleep(0.002)
        time.sleep(delay)
        if proc.poll() is None and kills < 3:
            proc.kill()
        _, err = proc.communicate(timeout=300)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, err
        kills += 1
    assert proc.returncode == 0 and kills == 3, (kills, err)
    _assert_same_store(shards, job["ref"] / "shards")
    assert _skipped(shards, job["folder"]) == sorted(CORRUPT)  # listed once each, whatever the kills
    ref_index, index = HashIndex.load(job["ref"] / "index"), HashIndex.load(out / "index")
    queries = ShardReader(shards).read(("codes",))["codes"][::7]
    for got, want in zip(index.search(queries, k=10), ref_index.search(queries, k=10)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_resume_right_after_a_shard_with_a_skipped_file(job, tmp_path):
    """The deterministic worst case of the kills above: the last complete shard has a gap where a
    file was skipped (so its first id + count is not where the next run must start)."""
    from encoders import load_encoder
    from encoders.data import list_images
    from encoders.encode import encode_folder

    listing = [os.path.relpath(p, job["folder"]) for p, _ in list_images(job["folder"]).samples]
    gap = listing.index("1/img_zero.png")
    stop = gap + 9  # with SHARD_SIZE 16: the shard holding the gap ends at id gap + 8, complete
    model = load_encoder(job["model"])
    first = encode_folder(model, job["folder"], tmp_path / "s", shard_size=SHARD_SIZE, batch_size=BATCH,
                          ids=range(stop), device="cpu", progress=False)
    assert first.encoded == stop - 1 and (stop - 1) % SHARD_SIZE == 0
    encode_folder(model, job["folder"], tmp_path / "s", shard_size=SHARD_SIZE, batch_size=BATCH, resume=True,
                  device="cpu", progress=False)
    got, want = (ShardReader(d) for d in (tmp_path / "s", job["ref"] / "shards"))
    assert [(e["count"], e["first_id"]) for e in got.info.shards] == [(e["count"], e["first_id"])
                                                                      for e in want.info.shards]
    a, b = got.read(("ids", "labels", "paths")), want.read(("ids", "labels", "paths"))
    for name in ("ids", "labels", "paths"):
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))
    assert _skipped(tmp_path / "s", job["folder"]) == sorted(CORRUPT)


# Imports torch once, then forks one real process per fault (forking before any torch op is
# safe): each child hooks the chosen call, runs a resuming encode, and SIGKILLs itself at the
# N-th call; the parent prints each child's exit code.
_FAULT_SERVER = textwrap.dedent("""
    import os, signal, sys, traceback
    from encoders import load_encoder
    from encoders.encode import encode_folder
    from hashindex.store import ShardWriter
    model_path, folder, out = sys.argv[1:4]

    def run(what, nth, when):
        calls = [0]
        owner, name = {"replace": (os, "replace"), "fsync": (os, "fsync"), "append": (ShardWriter, "_append")}[what]
        real = getattr(owner, name)

        def wrapped(*args, **kwargs):
            calls[0] += 1
            if calls[0] == nth and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(*args, **kwargs)
            if calls[0] == nth and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(owner, name, wrapped)
        encode_folder(load_encoder(model_path), folder, out, shard_size=%d, batch_size=%d, resume=True,
                      device="cpu", progress=False)

    for line in sys.stdin:
        what, nth, when = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                import torch
                torch.set_num_threads(1)
                run(what, int(nth), when)
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(1)
            os._exit(0)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
""" % (SHARD_SIZE, BATCH))


@pytest.mark.slow
def test_encode_survives_faults_at_renames_fsyncs_and_appends(job, tmp_path):
    """SIGKILL at seeded points: before/after the N-th os.replace (shard or manifest), os.fsync,
    or batch append into the open shard; each rerun resumes; the result equals the reference."""
    rng = np.random.default_rng(11)
    shards = tmp_path / "shards"
    faults = [("replace", "before"), ("replace", "after"), ("fsync", "after"), ("append", "after"),
              ("replace", "after"), ("append", "before"), ("fsync", "before")]
    server = subprocess.Popen([sys.executable, "-c", _FAULT_SERVER, str(job["model"]), str(job["folder"]),
                               str(shards)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        codes = []
        for what, when in faults + [("append", "never")]:
            server.stdin.write(f"{what} {int(rng.integers(2, 9))} {when}\n")
            server.stdin.flush()
            codes.append(int(server.stdout.readline() or 99))
    finally:
        server.stdin.close()
        server.wait(timeout=60)
        err = server.stderr.read()
    assert all(code in (0, -signal.SIGKILL) for code in codes), (codes, err)
    assert codes.count(-signal.SIGKILL) >= 5 and codes[-1] == 0, (codes, err)
    _assert_same_store(shards, job["ref"] / "shards")
    assert _skipped(shards, job["folder"]) == sorted(CORRUPT)


# --------------------------------------------------------------------------- index.save


def _index(rng, n, marker):
    index = HashIndex(64, "flat", metadata={"marker": marker})
    index.codes = rng.integers(0, 256, size=(n, 8), dtype=np.uint8)  # kept for the comparisons
    index.add(index.codes, labels=rng.integers(0, 5, n), features=rng.normal(size=(n, 4)).astype(np.float32))
    return index


def _assert_same_index(got: HashIndex, want: HashIndex) -> None:
    assert got.metadata == want.metadata and len(got) == len(want)
    for a, b in [(got.labels, want.labels), (got.ids, want.ids), (got.features, want.features)]:
        np.testing.assert_array_equal(a, b)
    for a, b in zip(got.search(want.codes, 5), want.search(want.codes, 5)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fail_at", ["write_index", "data", "meta", "fsync", "pointer"])
def test_failed_save_leaves_previous_index_loadable(tmp_path, rng, monkeypatch, fail_at):
    """A save that dies at any step (a fault injected there) leaves the previous version loadable,
    and the next successful save cleans the debris up (keeping the version it replaces)."""
    import faiss
    import h5py

    import hashindex.persistence as persistence_mod
    import hashindex.index_dir as index_dir_mod

    old, new = _index(rng, 300, "old"), _index(rng, 500, "new")
    old_dir = old.save(tmp_path / "ix")

    def boom(*args, **kwargs):
        raise OSError(f"injected failure at {fail_at}")

    target = {"write_index": (faiss, "serialize_index_binary"), "data": (h5py, "File"),
              "meta": (persistence_mod, "write_json_atomic"), "fsync": (persistence_mod, "fsync_path"),
              "pointer": (index_dir_mod, "replace_durably")}[fail_at]
    with monkeypatch.context() as patch:
        patch.setattr(*target, boom)
        with pytest.raises(OSError, match="injected failure"):
            new.save(tmp_path / "ix")
    _assert_same_index(HashIndex.load(tmp_path / "ix"), old)
    new_dir = new.save(tmp_path / "ix")
    _assert_same_index(HashIndex.load(tmp_path / "ix"), new)
    assert sorted((tmp_path / "ix").glob("v-*")) == sorted([old_dir, new_dir])
    assert not list((tmp_path / "ix").glob("*.tmp"))


# The two indexes the save loop alternates between, as (marker, codes, labels, features); run
# by the saving process and by the test that checks what it left.
_VERSIONS = textwrap.dedent("""
    import numpy as np
    rng = np.random.default_rng(0)
    VERSIONS = []
    for i, marker in enumerate("ab"):
        n = 20_000 + 5_000 * i
        VERSIONS.append((marker, rng.integers(0, 256, size=(n, 8), dtype=np.uint8), rng.integers(0, 9, n),
                         rng.normal(size=(n, 32)).astype(np.float32)))
""")

_SAVE_LOOP = _VERSIONS + textwrap.dedent("""
    import sys
    from hashindex import HashIndex
    versions = []
    for marker, codes, labels, features in VERSIONS:
        versions.append(HashIndex(64, metadata={"marker": marker}))
        versions[-1].add(codes, labels=labels, features=features)
    versions[0].save(sys.argv[1])
    print("ready", flush=True)
    for i in range(10_000):
        versions[(i + 1) % 2].save(sys.argv[1])
""")


@pytest.mark.slow
def test_kill_9_during_save_leaves_a_loadable_index(tmp_path):
    """A process saving two alternating versions in a loop, killed at seeded random moments:
    the directory always loads, as one of the two versions, intact."""
    rng = np.random.default_rng(3)
    namespace: dict = {}
    exec(_VERSIONS, namespace)
    versions = {marker: rest for marker, *rest in namespace["VERSIONS"]}
    interrupted_saves = 0
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _SAVE_LOOP, str(tmp_path / "ix")], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(float(rng.uniform(0.05, 1.5)))
        proc.kill()
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        # a save cut short leaves its version directory (or pointer) behind, never in use (beside
        # the current version and the one it replaced)
        interrupted_saves += len(list((tmp_path / "ix").glob("v-*"))) > 2 or any((tmp_path / "ix").glob("*.tmp"))
        index = HashIndex.load(tmp_path / "ix")
        codes, labels, features = versions[index.metadata["marker"]]
        np.testing.assert_array_equal(index.labels, labels)
        np.testing.assert_array_equal(index.features, features)
        np.testing.assert_array_equal(index.ids, np.arange(len(codes)))
        D, I = index.search(codes[::500], 1)
        assert (D[:, 0] == 0).all() and (I[:, 0] == np.arange(0, len(codes), 500)).all()
    assert interrupted_saves >= 2
