"""The CLI under faults (issue #14), each run in a subprocess as a user would: a full disk (a small
tmpfs, where mounting is permitted), another model or a changed folder on ``--resume``, ``build``
into an existing ``--out``, a mismatched model at search time, undecodable file names, Ctrl-C,
bad model files, a read-only store, a second writer. User and environment errors end with one
``Error:`` line on stderr, never a traceback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hashindex import ShardReader
from hashindex.durable import DirectoryLock

pytestmark = pytest.mark.slow  # about 20 CLI subprocesses (each imports torch): minutes on 2 cores

SHARD, BATCH = 16, 8
FIELDS = ("codes", "labels", "ids", "features", "paths")


def _cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hashapp.cli", "--threads", "1", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=_ENV, **kwargs)


_ENV = {**os.environ, "PYTHONPATH": os.getcwd(), "TQDM_DISABLE": "1"}


def _encode_args(folder, model, out, *extra):
    return ("encode", folder, "--model", model, "--out", out, "--shard-size", SHARD, "--batch-size", BATCH, *extra)


def _assert_one_error_line(result, *needles) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _assert_same_store(got: Path, want: Path) -> None:
    a, b = ShardReader(got), ShardReader(want)
    assert [(s["count"], s["first_id"]) for s in a.info.shards] == [(s["count"], s["first_id"]) for s in b.info.shards]
    x, y = a.read(FIELDS), b.read(FIELDS)
    for name in FIELDS:
        np.testing.assert_array_equal(np.asarray(x[name]), np.asarray(y[name]), err_msg=name)


@pytest.fixture(scope="module")
def job(tmp_path_factory, digits16_folder, save_tiny_encoder):
    """A 240-image folder, two models of the same width, and an uninterrupted encode."""
    root = tmp_path_factory.mktemp("rel-cli")
    folder = digits16_folder
    model, other = save_tiny_encoder(root / "model.pt", 0), save_tiny_encoder(root / "other.pt", 1)
    ref = root / "reference"
    result = _cli(*_encode_args(folder, model, ref))
    assert result.returncode == 0, result.stderr
    return {"root": root, "folder": folder, "model": model, "other": other, "ref": ref}


def _copy_folder(job, tmp_path) -> Path:
    return Path(shutil.copytree(job["folder"], tmp_path / "images"))


def _partial_store(job, tmp_path, shards: int = 3) -> Path:
    """A store that an interrupted encode left: the reference's first ``shards`` shards."""
    out = tmp_path / "partial"
    out.mkdir()
    for name in sorted(p.name for p in job["ref"].glob("part-*.h5"))[:shards]:
        shutil.copy(job["ref"] / name, out / name)
    info = ShardReader(job["ref"]).info
    info.shards = info.shards[:shards]
    from hashindex.store import write_store_info

    write_store_info(out, info)
    return out


# ------------------------------------------------------------------ a full disk
def _can_mount_tmpfs(tmp_path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"],
                           capture_output=True)
    return probe.returncode == 0


def test_encode_on_a_full_disk_fails_with_one_line_and_resumes(job, tmp_path):
    """A real small tmpfs fills up mid-encode: one error line, no shard that fails its checksums;
    once there is room, --resume completes a store equal to an uninterrupted run's."""
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    kept.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("mounting a tmpfs is not permitted here (unshare -rm mount)")
    cli = f"{sys.executable} -m hashapp.cli --threads 1"
    encode = f"{cli} encode {job['folder']} --model {job['model']} --out {disk}/s --shard-size {SHARD} " \
             f"--batch-size {BATCH}"
    script = f"""
        mount -t tmpfs -o size=100k tmpfs {disk}
        {encode} > {kept}/out1 2> {kept}/err1; echo $? > {kept}/rc1
        cp -a {disk}/s {kept}/full
        mount -o remount,size=20m {disk}
        {encode} --resume > {kept}/out2 2> {kept}/err2; echo $? > {kept}/rc2
        cp -a {disk}/s {kept}/resumed
    """
    subprocess.run(["unshare", "-rm", "sh", "-c", script], check=True, timeout=600, env=_ENV)
    first = subprocess.CompletedProcess([], int((kept / "rc1").read_text()), (kept / "out1").read_text(),
                                        (kept / "err1").read_text())
    _assert_one_error_line(first, "No space left on device")
    full = ShardReader(kept / "full")  # every shard it kept is listed and intact
    assert 0 < len(full) < 240
    full.read(FIELDS)
    assert int((kept / "rc2").read_text()) == 0, (kept / "err2").read_text()
    _assert_same_store(kept / "resumed", job["ref"])


# ------------------------------------------------------------------ resume with other inputs
def test_resume_with_another_model_is_refused(job, tmp_path):
    store = _partial_store(job, tmp_path)
    before = (store / "manifest.json").read_bytes()
    result = _cli(*_encode_args(job["folder"], job["other"], store, "--resume"))
    _assert_one_error_line(result, "cannot resume, the store holds codes of another model")
    assert (store / "manifest.json").read_bytes() == before and len(list(store.glob("part-*"))) == 3
    assert _cli(*_encode_args(job["folder"], job["model"], store, "--resume")).returncode == 0
    _assert_same_store(store, job["ref"])


def test_resume_after_the_folder_changed_is_refused(job, tmp_path):
    folder = _copy_folder(job, tmp_path)
    store = _partial_store(job, tmp_path)
    shutil.copy(folder / "0" / "img000000.png", folder / "0" / "img000000a.png")  # shifts every later id
    result = _cli(*_encode_args(folder, job["model"], store, "--resume"))
    _assert_one_error_line(result, "the folder changed", "240 images then, 241 now", "hashindex add")
    assert len(ShardReader(store)) == 3 * SHARD


def test_resume_with_nothing_to_do_works_on_a_read_only_store(job, tmp_path):
    store = tmp_path / "done"
    shutil.copytree(job["ref"], store)
    (tmp_path / "probe").mkdir()
    if not _can_mount_tmpfs(tmp_path / "probe"):
        pytest.skip("mounting is not permitted here (unshare -rm mount)")
    cli = f"{sys.executable} -m hashapp.cli --threads 1"
    script = f"""
        mount --bind {store} {store} && mount -o remount,ro,bind {store}
        {cli} encode {job['folder']} --model {job['model']} --out {store} --shard-size {SHARD} --resume \
            > {tmp_path}/out1 2> {tmp_path}/err1; echo $? > {tmp_path}/rc1
        {cli} index {store} --out {store}/index > {tmp_path}/out2 2> {tmp_path}/err2; echo $? > {tmp_path}/rc2
    """
    subprocess.run(["unshare", "-rm", "sh", "-c", script], check=True, timeout=300, env=_ENV)
    assert int((tmp_path / "rc1").read_text()) == 0, (tmp_path / "err1").read_text()
    assert "encoded 0 images" in (tmp_path / "out1").read_text()
    index = subprocess.CompletedProcess([], int((tmp_path / "rc2").read_text()), "", (tmp_path / "err2").read_text())
    _assert_one_error_line(index, "Read-only file system")


# ------------------------------------------------------------------ build, index and search with the wrong model
def test_build_into_an_existing_out_is_refused_before_training(job, tmp_path):
    out = tmp_path / "build"
    out.mkdir()
    shutil.copy(job["model"], out / "model.pt")
    shutil.copytree(job["ref"], out / "shards")
    before = (out / "model.pt").stat().st_mtime_ns
    result = _cli("build", job["folder"], "--out", out, "--epochs", "1", "--bits", "32")
    _assert_one_error_line(result, "already holds a build (model.pt, shards)", "--resume")
    assert (out / "model.pt").stat().st_mtime_ns == before


def test_index_and_search_refuse_a_model_that_did_not_make_the_codes(job, tmp_path):
    result = _cli("index", job["ref"], "--out", tmp_path / "ix", "--model", job["other"])
    _assert_one_error_line(result, "holds codes of another model")
    assert _cli("index", job["ref"], "--out", tmp_path / "ix", "--model", job["model"]).returncode == 0
    query = sorted((job["folder"] / "2").iterdir())[0]
    _assert_one_error_line(_cli("search", tmp_path / "ix", query, "--model", job["other"]),
                           "holds codes of another model")
    assert _cli("search", tmp_path / "ix", query).returncode == 0


# ------------------------------------------------------------------ odd names, Ctrl-C, bad files, locks
def test_undecodable_file_names_are_encoded_and_kept_byte_for_byte(job, tmp_path):
    folder = _copy_folder(job, tmp_path)
    good = folder / "1" / os.fsdecode(b"bad\xff.png")
    shutil.copy(folder / "1" / "img000061.png", good)
    (folder / "2" / os.fsdecode(b"broken\xfe.png")).write_bytes(b"not an image")
    result = _cli(*_encode_args(folder, job["model"], tmp_path / "s"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "skipped 1 unreadable file(s)" in result.stderr and "broken\ufffd.png" in result.stderr
    paths = ShardReader(tmp_path / "s").read(("paths",))["paths"]
    assert len(paths) == 241 and os.fsencode(os.path.join("1", "bad\udcff.png")) in {os.fsencode(p) for p in paths}
    skipped = (tmp_path / "s" / "skipped.jsonl").read_text()
    assert "broken\\udcfe.png" in skipped


def test_ctrl_c_keeps_the_layout_of_an_uninterrupted_run(job, tmp_path):
    out = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "hashapp.cli", "--threads", "1",
                             *map(str, _encode_args(job["folder"], job["model"], out))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ENV)
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.h5"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the encode finished before the interrupt")
    result = subprocess.CompletedProcess([], proc.returncode, "", err)
    _assert_one_error_line(result, "interrupted", "--resume")
    assert proc.returncode == 130 and not list(out.glob("part-*.tmp"))  # the open shard was discarded
    assert _cli(*_encode_args(job["folder"], job["model"], out, "--resume")).returncode == 0
    _assert_same_store(out, job["ref"])


@pytest.mark.parametrize("damage", ["unknown config key", "weights of another shape", "weights path in config",
                                    "not an encoder"])
def test_bad_model_files_give_one_line(job, tmp_path, damage):
    payload = torch.load(job["model"], weights_only=True)
    if damage == "unknown config key":
        payload["config"]["colour"] = "blue"
    elif damage == "weights of another shape":
        payload["config"]["feature_dim"] = 24
    elif damage == "weights path in config":
        payload["config"]["weights"] = "/nonexistent/weights.pt"
    else:
        payload = {"format": "something else"}
    torch.save(payload, tmp_path / "bad.pt")
    result = _cli(*_encode_args(job["folder"], tmp_path / "bad.pt", tmp_path / "s"))
    if damage == "weights path in config":  # build-only keys are dropped: the file still loads
        assert result.returncode == 0, result.stderr
        return
    _assert_one_error_line(result, "bad.pt")


def test_a_second_writer_gets_one_line(job, tmp_path):
    store = _partial_store(job, tmp_path)
    with DirectoryLock(store, "shard store"):
        result = _cli(*_encode_args(job["folder"], job["model"], store, "--resume"))
    _assert_one_error_line(result, "another process is writing this shard store")
    assert len(ShardReader(store)) == 3 * SHARD


def test_damaged_index_gives_one_line(job, tmp_path):
    assert _cli("index", job["ref"], "--out", tmp_path / "ix", "--model", job["model"]).returncode == 0
    index_dir = tmp_path / "ix"
    current = (index_dir / "CURRENT").read_text().strip()
    os.truncate(index_dir / current / "data.h5", 100)
    query = sorted((job["folder"] / "2").iterdir())[0]
    _assert_one_error_line(_cli("search", index_dir, query), "data.h5")
