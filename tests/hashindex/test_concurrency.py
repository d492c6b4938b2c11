"""Concurrency: threads searching one index while other processes read (or append to) the
same shard store; every result equals the single-threaded one, every read a consistent store."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

from hashindex import HashIndex, ShardReader, ShardWriter

N, BITS, DIM, SHARD = 3000, 64, 8, 400


def _records(seed: int = 0):
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(N // 10, BITS // 8), dtype=np.uint8)  # distance ties galore
    return {"codes": patterns[rng.integers(0, len(patterns), size=N)], "labels": rng.integers(0, 5, N),
            "features": rng.integers(-3, 4, size=(N, DIM)).astype(np.float32)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    directory = tmp_path_factory.mktemp("concurrency") / "s"
    data = _records()
    with ShardWriter(directory, BITS, feature_dim=DIM, feature_dtype="float32", shard_size=SHARD) as writer:
        for start in range(0, N, 250):
            writer.add(**{k: v[start:start + 250] for k, v in data.items()})
    return directory


_READER = textwrap.dedent("""
    import sys, zlib
    import numpy as np
    from hashindex import HashIndex, ShardReader
    want, reads = int(sys.argv[2]), 0
    while reads < int(sys.argv[3]):
        data = ShardReader(sys.argv[1]).read(("codes", "labels", "ids", "features"))
        got = zlib.crc32(b"".join(np.ascontiguousarray(data[k]).tobytes()
                                  for k in ("codes", "labels", "ids", "features")))
        assert got == want, f"read {reads}: checksum {got} != {want}"
        assert len(HashIndex.from_shards(sys.argv[1], progress=False)) == len(data["ids"])
        reads += 1
    print("reads", reads)
""")


def _crc(data) -> int:
    import zlib

    return zlib.crc32(b"".join(np.ascontiguousarray(data[k]).tobytes() for k in ("codes", "labels", "ids", "features")))


@pytest.mark.parametrize("spec", ["flat", "IVF16,nprobe=4", "HNSW16,efSearch=32"])
def test_threads_search_while_another_process_reads_the_shards(store, spec):
    index = HashIndex.from_shards(store, spec=spec, progress=False)
    data = ShardReader(store).read(("codes", "labels", "ids", "features"))
    rng = np.random.default_rng(1)
    queries = np.concatenate([data["codes"][rng.integers(0, N, 150)],
                              rng.integers(0, 256, size=(50, BITS // 8), dtype=np.uint8)])
    qfeats = rng.integers(-3, 4, size=(len(queries), DIM)).astype(np.float32)
    batches = [slice(s, s + 25) for s in range(0, len(queries), 25)]

    def run(batch):
        q, f = queries[batch], qfeats[batch]
        out = [*index.search(q, k=20), *index.search_rerank(q, f, k=10, candidates=60), index.vote(q, k=8)]
        if spec != "HNSW16,efSearch=32":
            lims, D, I = index.range_search(q, 6)
            out += [lims, D, I]
        return out

    expected = [run(b) for b in batches]  # single-threaded
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(store), str(_crc(data)), "6"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mismatches, errors = [], []

    def worker(seed):
        order = np.random.default_rng(seed).permutation(len(batches) * 3) % len(batches)
        try:
            for b in order:
                got = run(batches[b])
                if not all(np.array_equal(x, y) for x, y in zip(got, expected[b])):
                    mismatches.append((seed, int(b)))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    def shard_reader_thread():  # HDF5 reads in this process too, beside the searches
        try:
            for _ in range(3):
                assert _crc(ShardReader(store).read(("codes", "labels", "ids", "features"))) == _crc(data)
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    threads.append(threading.Thread(target=shard_reader_thread))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    out, err = reader.communicate(timeout=300)
    assert not errors and not mismatches, (errors, mismatches[:5])
    assert reader.returncode == 0 and out.strip() == "reads 6", err


_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    from test_concurrency import _records, SHARD, BITS, DIM
    from hashindex import ShardWriter
    data = _records()
    with ShardWriter(sys.argv[1], BITS, feature_dim=DIM, feature_dtype="float32", shard_size=SHARD) as writer:
        for start in range(0, len(data["codes"]), 100):
            writer.add(**{k: v[start:start + 100] for k, v in data.items()})
            time.sleep(0.01)
""")


def test_readers_see_only_complete_shards_while_another_process_writes(tmp_path):
    """Each read taken while a writer appends is a prefix of the final store, in whole shards."""
    from pathlib import Path

    data = _records()
    directory = tmp_path / "s"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(directory), str(Path(__file__).parent)],
                              stderr=subprocess.PIPE, text=True)
    sizes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "ignoring incomplete temporary file": the shard being written
        while True:
            done = writer.poll() is not None
            if (directory / "manifest.json").exists():
                got = ShardReader(directory).read(("codes", "labels", "ids", "features"))
                n = len(got["ids"])
                assert n % SHARD == 0 or n == N
                np.testing.assert_array_equal(got["ids"], np.arange(n))
                for key in ("codes", "labels", "features"):
                    np.testing.assert_array_equal(got[key], data[key][:n])
                sizes.append(n)
            if done:
                break
            time.sleep(0.005)
    assert writer.wait() == 0, writer.stderr.read()
    assert sizes[-1] == N and len(set(sizes)) >= 3  # reads saw the store grow
