"""Distributed encoding on a local 2-CPU Ray instance equals the single-process encode, and a
worker killed mid-run loses nothing once the run is resumed."""

import json
import os
import shutil
import signal
import time

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'hashindex[distributed]')")

from encoders import create_encoder, save_encoder  # noqa: E402
from encoders.distributed_encode import CLAIM, DONE, WORK_DIR, EncodeChunkError, encode_folder_ray  # noqa: E402
from encoders.encode import SKIPPED_REPORT, encode_folder  # noqa: E402
from hashindex import ShardReader, read_store_info  # noqa: E402
from hashindex.datasets import write_image_folder  # noqa: E402
from hashindex.testing import start_in_thread  # noqa: E402

FIELDS = ("codes", "labels", "ids", "features", "paths")
RUN = dict(batch_size=8, shard_size=16, progress=False, cpus_per_worker=1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, digits):
    """160 digit images in 4 class folders and 2 unreadable files (ids 40 and 161)."""
    images, labels = digits
    rows = np.concatenate([np.flatnonzero(labels == c)[:40] for c in range(4)])
    root = write_image_folder(images[rows], labels[rows], tmp_path_factory.mktemp("ray-enc") / "images")
    (root / "1" / "a_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "3" / "z_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    # 96 px inputs keep each chunk busy long enough for the kill tests to land inside one.
    model = create_encoder("dlbhc", backbone="small_cnn", bits=32, num_classes=4, width=8, feature_dim=16,
                           input_size=96)
    return save_encoder(model, tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def reference(folder, model_file, tmp_path_factory):
    """The single-process encode, with 1 torch thread like each worker (float sums then match
    bit for bit; with other thread counts features differ in the last float16 bit)."""
    from encoders import load_encoder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("reference") / "shards"
        encode_folder(load_encoder(model_file), folder, out, batch_size=8, shard_size=16, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def assert_same_store(reference, store):
    want, got = ShardReader(reference), ShardReader(store)
    a, b = want.read(FIELDS), got.read(FIELDS)
    for name in FIELDS:
        if name == "paths":
            assert a[name] == b[name]
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert got.class_names == want.class_names and got.feature_dim == want.feature_dim
    for key in ("image_root", "encoder", "encoder_config"):
        assert got.info.metadata[key] == want.info.metadata[key]
    lines = [json.loads(line) for line in (reference / SKIPPED_REPORT).read_text().splitlines()]
    assert [json.loads(line) for line in (store / SKIPPED_REPORT).read_text().splitlines()] == lines
    assert [entry["id"] for entry in lines] == [40, 161]


def test_ray_encode_equals_single_process(ray_local, folder, model_file, reference, tmp_path):
    out = tmp_path / "shards"
    report = encode_folder_ray(model_file, folder, out, num_workers=2, chunk_size=20, **RUN)
    assert report.num_images == 162 and report.encoded == 160
    assert report.num_chunks == 7, "chunk_size 20 is rounded up to 24, a multiple of the batch size"
    assert sorted(report.encoded_chunks) == list(range(7)) and report.reused_chunks == []
    assert_same_store(reference, out)
    assert not (out / WORK_DIR).exists(), "chunk stores are removed once merged"
    # Resuming a finished encode does nothing and changes nothing.
    again = encode_folder_ray(model_file, folder, out, num_workers=2, chunk_size=20, resume=True, **RUN)
    assert again.encoded_chunks == [] and again.encoded == 160
    assert_same_store(reference, out)


def test_ray_encode_accepts_a_model_object(ray_local, folder, model_file, reference, tmp_path):
    from encoders import load_encoder

    out = tmp_path / "shards"
    encode_folder_ray(load_encoder(model_file), folder, out, num_workers=1, chunk_size=64, **RUN)
    assert_same_store(reference, out)


def test_existing_store_is_not_overwritten(ray_local, folder, model_file, reference, tmp_path):
    shutil.copytree(reference, tmp_path / "shards")
    with pytest.raises(FileExistsError, match="resume=True"):
        encode_folder_ray(model_file, folder, tmp_path / "shards", **RUN)
    with pytest.raises(FileExistsError, match="not written by a distributed encode"):
        encode_folder_ray(model_file, folder, tmp_path / "shards", resume=True, **RUN)


def _kill_workers_during(out, run, max_kills=1):
    """Run ``run`` in a thread; SIGKILL the worker of the first ``max_kills`` chunks seen in
    progress (claimed, not done). Returns the run's outcome and the killed chunks."""
    killed = set()
    thread, outcome = start_in_thread(run)
    work = out / WORK_DIR
    while thread.is_alive():
        for claim in work.glob(f"chunk-*/{CLAIM}") if work.exists() else []:
            chunk = int(claim.parent.name.split("-")[1])
            if len(killed) >= max_kills or chunk in killed or (claim.parent / DONE).exists():
                continue
            try:
                pid = json.loads(claim.read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.add(chunk)
            except (OSError, ValueError):  # claim being replaced, or the worker already gone
                pass
        time.sleep(0.01)
    thread.join()
    return outcome, killed


@pytest.mark.slow
def test_killed_worker_loses_nothing_after_resume(ray_local, folder, model_file, reference, tmp_path):
    out = tmp_path / "shards"
    outcome, killed = _kill_workers_during(
        out, lambda: encode_folder_ray(model_file, folder, out, num_workers=2, chunk_size=32, max_retries=0, **RUN))
    error = outcome.get("error")
    assert isinstance(error, EncodeChunkError), f"expected the killed chunks to fail the run, got {outcome}"
    assert set(error.failed) <= killed and error.failed, "only killed chunks fail, and they are named"
    assert "resume=True" in str(error)
    # The store is valid at every moment: a prefix of whole chunks.
    partial = ShardReader(out)
    merged = partial.info.metadata["ray_encode"]["merged_chunks"]
    assert merged <= min(error.failed)
    assert len(partial) == sum(1 for i in range(merged * 32) if i not in (40, 161))
    with pytest.raises(ValueError, match="chunk_size was 32, now 40"):
        encode_folder_ray(model_file, folder, out, num_workers=2, chunk_size=40, resume=True, **RUN)
    report = encode_folder_ray(model_file, folder, out, num_workers=2, chunk_size=32, resume=True, **RUN)
    assert set(error.failed) <= set(report.encoded_chunks)
    assert set(report.reused_chunks) == set(range(report.num_chunks)) - set(report.encoded_chunks)
    assert report.reused_chunks, "chunks finished before the kill are not encoded again"
    assert_same_store(reference, out)


@pytest.mark.slow
def test_killed_worker_is_retried_within_the_run(ray_local, folder, model_file, reference, tmp_path):
    out = tmp_path / "shards"
    outcome, killed = _kill_workers_during(
        out, lambda: encode_folder_ray(model_file, folder, out, num_workers=2, chunk_size=48, max_retries=-1, **RUN))
    assert "error" not in outcome, outcome.get("error")
    assert killed, "no worker was caught mid-chunk"
    assert read_store_info(out).metadata["ray_encode"]["finished"]
    assert_same_store(reference, out)


def test_cli_encode_ray(ray_local, folder, model_file, reference, tmp_path):
    from click.testing import CliRunner

    from hashapp.cli import main

    out = tmp_path / "shards"
    result = CliRunner().invoke(main, ["encode", str(folder), "--model", str(model_file), "--out", str(out),
                                       "--shard-size", "16", "--batch-size", "8", "--ray", "--workers", "2",
                                       "--chunk-size", "48"])
    assert result.exit_code == 0, result.output
    assert "on 2 Ray worker(s): 160 records" in result.output and "skipped 2 unreadable" in result.output
    assert_same_store(reference, out)
