"""The HTTP service against cold command-line calls, under concurrency, and the cost of `add`.

One run, one JSON (``benchmarks/results/service.json``) and a markdown summary beside it:

- ``warm_vs_cold``: p50 of one-image ``POST /search`` (k=8; the upload's decode, the encode and
  the search all included) against a ``hashindex serve-http`` process holding ``--codes`` 64-bit
  codes (flat index), vs the wall time of a cold ``hashindex search INDEX IMAGE`` process on the
  same index. Rounds alternate one cold call and ``--warm-per-round`` warm requests, so machine
  load hits both alike; the ratio is cold median / warm p50.
- ``concurrent``: ``--concurrent`` requests from a bounded pool of ``--clients`` threads, each a
  different query image; every answer must equal that image's sequential answer.
- ``add``: ``add_images`` of a ``--new-class``-image folder (a new class) into the saved index,
  for flat and IVF, vs rebuilding the index from its store (a full re-encode would cost far
  more, extrapolated from the measured encode rate); the bytes it wrote (index version + store
  shard and manifest); and the save step alone for as many codes again: a delta save against a
  full save (seconds and bytes), on the same index.

The store holds the 1,797 sklearn digits (encoded by the model, with their image files) followed by
synthetic clustered codes (with made-up paths, which `add` reads) up to ``--codes``. The encoder
is an untrained DLBHC small CNN: latency does not depend on the weights, and correctness is
checked against the same model's answers.
Loopback only; the server process is stopped at the end.

    python benchmarks/service.py                      # 1M codes, about 5 minutes on 2 cores
    python benchmarks/service.py --codes 100000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hashindex import HashIndex, ShardWriter, read_store_info
from hashindex.index_dir import read_current
from hashindex.store import MANIFEST
from hashindex.datasets import load_digits_images, synthetic_codes, write_image_folder
from hashindex.timing import environment, timed

RESULTS = Path(__file__).resolve().parent / "results"
BITS = 64


def build_store(work: Path, n_codes: int, seed: int) -> tuple[Path, Path, Path]:
    """Model file, image folder of the digits, and a store of ``n_codes`` records without features
    (this benchmark does not rerank): the digits first, encoded by the model, then synthetic codes."""
    import torch

    from encoders import create_encoder, save_encoder
    from encoders.data import list_images
    from encoders.encode import encode_files

    torch.manual_seed(seed)
    model = create_encoder("dlbhc", backbone="small_cnn", bits=BITS, num_classes=10)
    model_path = save_encoder(model, work / "model.pt", class_names=[str(c) for c in range(10)])
    images, labels = load_digits_images(size=32)
    listing = list_images(write_image_folder(images, labels, work / "digits"))
    codes, _, encoded, failed = encode_files(model, [path for path, _ in listing.samples])
    assert not failed and len(encoded) == len(images)
    rest = n_codes - len(images)
    data = synthetic_codes(rest, 1, BITS, kind="clustered", seed=seed)
    synthetic_labels = np.random.default_rng(seed).integers(0, 10, rest)
    store = work / "store"
    with ShardWriter(store, BITS, class_names=listing.classes, shard_size=len(images),
                     metadata={"image_root": str(listing.root)}) as writer:
        writer.add(codes, labels=[label for _, label in listing.samples],
                   paths=[os.path.relpath(path, listing.root) for path, _ in listing.samples])
    with ShardWriter(store, BITS, shard_size=100_000, resume=True) as writer:
        for start in range(0, rest, 100_000):
            stop = min(start + 100_000, rest)  # paths as a real collection has them: `add` reads them all
            writer.add(data.database[start:stop], labels=synthetic_labels[start:stop],
                       paths=[f"synthetic/{i % 1000:03d}/{i:08d}.png" for i in range(start, stop)])
    return model_path, listing.root, store


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(index_dir: Path, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "hashapp.cli", "--threads", str(threads), "serve-http",
                                str(index_dir), "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    import httpx2 as httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve-http exited: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("serve-http did not answer /health in 300 s")


def search_request(client, path: Path) -> dict:
    response = client.post("/search", files=[("image", (path.name, path.read_bytes(), "image/png"))],
                           data={"k": "8"})
    response.raise_for_status()
    return response.json()


def warm_vs_cold(url: str, index_dir: Path, queries: list[Path], rounds: int, per_round: int, threads: int) -> dict:
    import httpx2 as httpx

    warm, cold = [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        for q in queries[:20]:
            search_request(client, q)  # warm-up
        for r in range(rounds):
            query = queries[r % len(queries)]
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "hashapp.cli", "--threads", str(threads), "search", str(index_dir),
                            str(query), "-k", "8", "--json"], check=True, capture_output=True)
            cold.append(time.perf_counter() - t0)
            for i in range(per_round):
                q = queries[(r * per_round + i) % len(queries)]
                t0 = time.perf_counter()
                search_request(client, q)
                warm.append(time.perf_counter() - t0)
    warm_ms = np.asarray(warm) * 1e3
    return {"warm_p50_ms": float(np.median(warm_ms)), "warm_p90_ms": float(np.percentile(warm_ms, 90)),
            "warm_p99_ms": float(np.percentile(warm_ms, 99)), "warm_requests": len(warm),
            "cold_median_s": statistics.median(cold), "cold_calls_s": cold, "cold_calls": len(cold),
            "ratio_cold_over_warm_p50": statistics.median(cold) / (float(np.median(warm_ms)) / 1e3)}


def breakdown(index_dir: Path, queries: list[Path], threads: int) -> dict:
    """Median ms of each step of a warm search, in this process (no HTTP): decode, encode, search."""
    import faiss
    import torch

    from hashapp.service import SearchService

    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    service = SearchService(index_dir)
    steps: dict[str, list[float]] = {"decode_ms": [], "encode_ms": [], "search_vote_paths_ms": []}
    for i, query in enumerate(queries * 2):
        t0 = time.perf_counter()
        images = service.decode([(query.name, query.read_bytes())])
        t1 = time.perf_counter()
        codes, _ = service.encode(images)
        t2 = time.perf_counter()
        service.search([query.name], codes, None, k=8, candidates=8)
        t3 = time.perf_counter()
        if i >= 10:  # warm-up
            for name, seconds in zip(steps, (t1 - t0, t2 - t1, t3 - t2)):
                steps[name].append(seconds * 1e3)
    return {name: statistics.median(values) for name, values in steps.items()}


def concurrent(url: str, queries: list[Path], n: int, clients: int) -> dict:
    import httpx2 as httpx

    with httpx.Client(base_url=url, timeout=120) as client:
        expected = {q: search_request(client, q) for q in queries}
        work = [queries[i % len(queries)] for i in range(n)]

        def one(q: Path):
            try:
                return q, search_request(client, q)
            except httpx.HTTPError as exc:
                return q, exc

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(one, work))
        wall = time.perf_counter() - t0
    failed = sum(isinstance(a, Exception) for _, a in answers)
    wrong = sum(not isinstance(a, Exception) and a != expected[q] for q, a in answers)
    return {"requests": n, "clients": clients, "answered": n - failed, "correct": n - failed - wrong,
            "failed": failed, "wrong": wrong, "wall_s": wall, "requests_per_s": n / wall}


def add_cost(work: Path, store: Path, model_path: Path, new_class: Path, spec: str) -> dict:
    """``add_images`` of the new class into a saved ``spec`` index over a copy of the store, vs a
    rebuild of that index from the store; and the encode rate, for a full re-encode's cost."""
    from encoders import load_encoder
    from encoders.encode import encode_files

    from hashapp.pipeline import index_shards
    from hashapp.update import add_images

    name = spec.split(",")[0]
    own_store, index_dir = work / f"store-{name}", work / f"index-{name}"
    shutil.copytree(store, own_store)
    _, rebuild_s = timed(lambda: index_shards(own_store, index_dir, spec=spec, model_path=model_path, progress=False))
    ntotal = len(HashIndex.load(index_dir))
    report, add_s = timed(lambda: add_images(index_dir, [new_class], label="new"))
    info = read_store_info(own_store)
    store_bytes = (own_store / info.shards[-1]["file"]).stat().st_size + (own_store / MANIFEST).stat().st_size
    added_version = read_current(index_dir)
    index_bytes, index_files = _bytes(added_version), sorted(p.name for p in added_version.iterdir())
    index, load_s = timed(lambda: HashIndex.load(index_dir))  # replays the delta
    n = len(report.ids)
    rng = np.random.default_rng(1)
    index.add(rng.integers(0, 256, (n, BITS // 8), dtype=np.uint8), labels=np.zeros(n, int))
    delta, delta_s = timed(lambda: index.save(index_dir, delta=True))
    index.add(rng.integers(0, 256, (n, BITS // 8), dtype=np.uint8), labels=np.zeros(n, int))
    full, full_s = timed(lambda: index.save(index_dir))
    files = sorted(str(p) for p in new_class.rglob("*.png"))
    model = load_encoder(model_path)
    _, encode_s = timed(lambda: encode_files(model, files))
    return {"spec": spec, "ntotal_before": ntotal, "added": n, "new_classes": report.new_classes,
            "add_images_s": add_s, "add_index_bytes": index_bytes, "add_store_bytes": store_bytes,
            "add_index_files": index_files,
            "index_load_s": load_s, "delta_save_s": delta_s, "delta_save_bytes": _bytes(delta),
            "full_save_s": full_s, "full_save_bytes": _bytes(full),
            "full_rebuild_from_store_s": rebuild_s, "rebuild_over_add": rebuild_s / add_s,
            "encode_images_per_s": len(files) / encode_s,
            "full_reencode_s_extrapolated": ntotal / (len(files) / encode_s)}


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def run(codes: int, rounds: int, per_round: int, n_concurrent: int, clients: int, new_class_size: int,
        threads: int, out_dir: Path, seed: int = 0, echo=print) -> dict:
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hashindex-service-") as tmp:
        work = Path(tmp)
        (model_path, digits, store), store_s = timed(lambda: build_store(work, codes, seed))
        echo(f"store of {codes} codes in {store_s:.1f} s")
        from hashapp.pipeline import index_shards

        index_shards(store, work / "index", spec="flat", model_path=model_path, progress=False)
        queries = sorted(digits.rglob("*.png"))[:: max(1, 1797 // 200)][:200]
        images, _ = load_digits_images(size=32)
        new_class = write_image_folder(images[-new_class_size:], np.zeros(new_class_size, int), work / "new",
                                       class_names=["new"], prefix="new")
        process, url = start_server(work / "index", threads)
        try:
            speed = warm_vs_cold(url, work / "index", queries, rounds, per_round, threads)
            echo(f"warm p50 {speed['warm_p50_ms']:.2f} ms, cold {speed['cold_median_s']:.2f} s: "
                 f"{speed['ratio_cold_over_warm_p50']:.0f}x")
            load = concurrent(url, queries, n_concurrent, clients)
            echo(f"{load['correct']}/{load['requests']} concurrent requests answered correctly")
        finally:
            process.terminate()
            process.wait(timeout=60)
        steps = breakdown(work / "index", queries[:50], threads)
        echo("in-process steps: " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
        adds = [add_cost(work, store, model_path, new_class, spec) for spec in ("flat", "IVF1024,nprobe=8")]
        for a in adds:
            echo(f"add {a['added']} into {a['spec']}: {a['add_images_s']:.2f} s vs rebuild "
                 f"{a['full_rebuild_from_store_s']:.2f} s")
    payload = {"environment": environment(threads=threads),
               "parameters": {"codes": codes, "bits": BITS, "rounds": rounds, "warm_per_round": per_round,
                              "concurrent": n_concurrent, "clients": clients, "new_class": new_class_size,
                              "threads": threads, "seed": seed},
               "warm_vs_cold": speed, "warm_steps_in_process": steps, "concurrent": load, "add": adds,
               "total_s": time.perf_counter() - started}
    (out_dir / "service.json").write_text(json.dumps(payload, indent=2))
    (out_dir / "service.md").write_text(summary(payload))
    return payload


def summary(payload: dict) -> str:
    s, c, p = payload["warm_vs_cold"], payload["concurrent"], payload["parameters"]
    lines = [f"# Service benchmark ({p['codes']:,} {p['bits']}-bit codes, {p['threads']} thread(s))", "",
             "| measure | value |", "|---|---|",
             f"| warm HTTP search p50 / p90 / p99 (decode + encode + search, k=8) | {s['warm_p50_ms']:.2f} / "
             f"{s['warm_p90_ms']:.2f} / {s['warm_p99_ms']:.2f} ms ({s['warm_requests']} requests) |",
             f"| cold `hashindex search` (median of {s['cold_calls']}) | {s['cold_median_s']:.2f} s |",
             f"| cold / warm p50 | {s['ratio_cold_over_warm_p50']:.0f}x |",
             "| warm steps in process, median (no HTTP) | " + ", ".join(
                 f"{k[:-3].replace('_', ' ')} {v:.2f} ms" for k, v in payload["warm_steps_in_process"].items()) + " |",
             f"| concurrent requests answered correctly | {c['correct']} / {c['requests']} ({c['clients']} clients, "
             f"{c['requests_per_s']:.0f} requests/s) |"]
    for a in payload["add"]:
        lines.append(f"| add {a['added']} images (new class) into {a['spec']}, {a['ntotal_before']:,} codes | "
                     f"{a['add_images_s']:.2f} s, wrote {a['add_index_bytes']:,} B of index and "
                     f"{a['add_store_bytes']:,} B of store (load after it {a['index_load_s']:.2f} s) vs rebuild "
                     f"from store {a['full_rebuild_from_store_s']:.2f} s; full re-encode "
                     f"~{a['full_reencode_s_extrapolated']:.0f} s (extrapolated) |")
        lines.append(f"| save of {a['added']} more codes into {a['spec']}: delta vs full | "
                     f"{a['delta_save_s'] * 1e3:.1f} ms, {a['delta_save_bytes']:,} B vs "
                     f"{a['full_save_s'] * 1e3:.1f} ms, {a['full_save_bytes']:,} B |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codes", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="cold calls (each followed by warm requests)")
    parser.add_argument("--warm-per-round", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--clients", type=int, default=32, help="threads sending the concurrent requests")
    parser.add_argument("--new-class", type=int, default=50, help="images in the added class")
    parser.add_argument("--threads", type=int, default=1, help="Faiss and torch threads of the server and CLI")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    run(args.codes, args.rounds, args.warm_per_round, args.concurrent, args.clients, args.new_class, args.threads,
        args.out)


if __name__ == "__main__":
    main()
