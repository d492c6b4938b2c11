"""The HTTP service: in-process through Starlette's TestClient, and on a real uvicorn for concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx2")  # what Starlette's TestClient uses
from starlette.testclient import TestClient  # noqa: E402

from hashapp.query import search_images  # noqa: E402
from hashapp.service import Limits, SearchService  # noqa: E402
from hashapp.web import create_app  # noqa: E402
from hashindex import HashIndex, ShardReader  # noqa: E402


@pytest.fixture(scope="module")
def client(shared_build):
    service = SearchService(shared_build / "index", limits=Limits(max_k=50, max_upload_bytes=200_000))
    with TestClient(create_app(service)) as client:
        yield client


def _upload(path, name=None):
    return ("image", (name or path.name, path.read_bytes(), "image/png"))


def _query(digits_folder, cls="2", i=0):
    return sorted((digits_folder / cls).iterdir())[i]


def test_health_stats_and_page(client):
    assert client.get("/health").json() == {"status": "ok", "ntotal": 120}
    stats = client.get("/stats").json()
    assert stats["ntotal"] == 120 and stats["bits"] == 32 and stats["classes"] == {str(c): 30 for c in range(4)}
    page = client.get("/")
    assert page.status_code == 200 and "<script>" in page.text and "http" not in page.text.split("<body>")[1]


@pytest.mark.parametrize("rerank", [False, True])
def test_search_by_upload_equals_the_python_api(client, shared_build, digits_folder, rerank):
    query = _query(digits_folder)
    response = client.post("/search", files=[_upload(query)], data={"k": "6", "rerank": str(rerank).lower(),
                                                                      "candidates": "40"})
    assert response.status_code == 200, response.text
    (got,) = response.json()["results"]
    (want,) = search_images(shared_build / "index", [query], k=6, rerank=rerank, candidates=40)
    assert got["neighbours"] == want["neighbours"] and got["voted_class"] == want["voted_class"]
    assert got["distance_kind"] == ("euclidean" if rerank else "hamming")
    assert all(type(n["distance"]) is (float if rerank else int) for n in got["neighbours"])
    assert got["neighbours"][0]["path"] == str(query.resolve()) or got["neighbours"][0]["distance"] == 0


def test_search_by_codes_and_labels(client, shared_build):
    index = HashIndex.load(shared_build / "index")
    codes = np.random.default_rng(0).integers(0, 256, (3, 4), dtype=np.uint8)
    response = client.post("/search", json={"codes": [c.tobytes().hex() for c in codes], "k": 5, "labels": ["1", "3"]})
    assert response.status_code == 200, response.text
    D, I = index.search(codes, k=5, labels=["1", "3"])
    votes = index.vote(codes, k=5, labels=["1", "3"])
    for row, item in enumerate(response.json()["results"]):
        assert item["voted_class"] == index.class_names[votes[row]]
        assert [n["id"] for n in item["neighbours"]] == I[row].tolist()
        assert [n["distance"] for n in item["neighbours"]] == D[row].tolist()
        assert {n["class"] for n in item["neighbours"]} <= {"1", "3"}
    bits = np.unpackbits(codes, axis=1, bitorder="little").tolist()  # 0/1 lists give the same answer
    assert client.post("/search", json={"codes": bits, "k": 5, "labels": ["1", "3"]}).json() == response.json()


@pytest.mark.parametrize("request_kwargs, status, reason", [
    ({"files": [("image", ("x.png", b"not an image", "image/png"))]}, 400, "x.png: not a readable image"),
    ({"files": [("image", ("big.png", b"0" * 300_000, "image/png"))]}, 413, "byte limit"),
    ({"data": {"k": "8"}}, 400, "send multipart/form-data"),
    ({"json": {"codes": ["00"], "k": 3}}, 400, "4 bytes"),
    ({"json": {"codes": ["00ff00ff"], "k": 51}}, 400, "k=51 exceeds the limit of 50"),
    ({"json": {"codes": ["00ff00ff"], "k": 0}}, 400, "k must be a positive integer"),
    ({"json": {"codes": ["00ff00ff"], "k": "many"}}, 400, "k must be a positive integer"),
    ({"json": {"codes": ["00ff00ff"], "labels": ["cow"]}}, 400, "unknown class 'cow'"),
    ({"json": {"codes": []}}, 400, "non-empty list"),
    ({"json": [1, 2]}, 400, "JSON body must be an object"),
    ({"content": b"{bad json", "headers": {"content-type": "application/json"}}, 400, "malformed JSON"),
])
def test_bad_requests_get_a_4xx_with_the_reason(client, request_kwargs, status, reason):
    response = client.post("/search", **request_kwargs)
    assert response.status_code == status and reason in response.json()["error"]


def test_upload_without_image_field_and_image_endpoint(client, digits_folder):
    response = client.post("/search", files=[("other", ("a.png", b"x", "image/png"))])
    assert response.status_code == 400 and "no image uploaded" in response.json()["error"]
    stored = client.get("/image/0")
    assert stored.status_code == 200 and stored.content == sorted((digits_folder / "0").iterdir())[0].read_bytes()
    assert client.get("/image/99999").status_code == 404 and client.get("/image/x").status_code == 400


def test_add_then_search_then_remove(tiny_build, new_class_folder):
    service = SearchService(tiny_build / "index")
    files = sorted((new_class_folder / "4").iterdir())
    with TestClient(create_app(service)) as client:
        response = client.post("/add", files=[_upload(f) for f in files], data={"label": "4"})
        assert response.status_code == 200, response.text
        added = response.json()
        assert added["new_classes"] == ["4"] and added["ntotal"] == 150 and added["ids"] == list(range(120, 150))
        assert client.get("/image/135").content == files[15].read_bytes()  # kept beside the store
        again = client.post("/add", files=[_upload(f) for f in files[:3]], data={"label": "4"}).json()
        assert again["ids"] == [] and again["ntotal"] == 150  # the same bytes: not stored twice
        assert [s["image"] for s in again["skipped"]] == [f.name for f in files[:3]]
        assert all(s["reason"].startswith("already in the index as id 12") for s in again["skipped"])
        votes = [client.post("/search", files=[_upload(f)]).json()["results"][0]["voted_class"] for f in files]
        assert votes.count("4") >= 24, votes
        assert client.get("/stats").json()["classes"]["4"] == 30
        saved = HashIndex.load(tiny_build / "index")  # the add is on disk too
        assert len(saved) == 150 and saved.class_names[-1] == "4"
        assert client.post("/add", json={"label": "4"}).status_code == 400
        removed = client.post("/remove", json={"label": "4"})
        assert removed.json() == {"removed": 30, "ntotal": 120}
        assert client.post("/remove", json={"ids": ["a"]}).status_code == 400
    assert len(HashIndex.load(tiny_build / "index")) == 120


def test_concurrent_requests_on_a_real_server_are_all_answered_correctly(tiny_build, digits_folder,
                                                                            new_class_folder, running_server):
    """60 concurrent searches (8 threads) with an add in the middle: every search restricted to
    the old classes must give exactly its single-threaded answer, and the add must land whole."""
    httpx = pytest.importorskip("httpx2")  # what Starlette's TestClient uses
    service = SearchService(tiny_build / "index")
    queries = [_query(digits_folder, str(c), i) for c in range(4) for i in range(3)]
    with TestClient(create_app(service)) as client:
        expected = {q.name: client.post("/search", files=[_upload(q)], data={"labels": "0,1,2,3", "k": "10"}).json()
                    for q in queries}
    new_files = sorted((new_class_folder / "4").iterdir())[:10]
    with running_server(create_app(service)) as url, httpx.Client(base_url=url, timeout=60) as http:
        def search(i):
            q = queries[i % len(queries)]
            return q.name, http.post("/search", files=[_upload(q)], data={"labels": "0,1,2,3", "k": "10"})

        def add():
            return http.post("/add", files=[_upload(f) for f in new_files], data={"label": "4"})

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(search, i) for i in range(30)] + [pool.submit(add)]
            futures += [pool.submit(search, i) for i in range(30, 60)]
            answers = [f.result() for f in futures]
    add_response = answers.pop(30)
    assert add_response.status_code == 200 and len(add_response.json()["ids"]) == 10
    assert len(answers) == 60
    for name, response in answers:
        assert response.status_code == 200 and response.json() == expected[name]
    assert len(HashIndex.load(tiny_build / "index")) == 130


def _cli_add(index_dir, files, label):
    import os
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "hashapp.cli", "--threads", "1", "add", str(index_dir),
                             *map(str, files), "--label", label], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": os.getcwd(), "TQDM_DISABLE": "1"})


def test_a_cli_add_while_the_server_serves_and_adds_loses_nothing(tiny_build, new_class_folder, running_server):
    """`hashindex add` in another process, first alone (the server must serve its records and
    add on top of them), then together with a `POST /add`: every batch ends up saved and served."""
    httpx = pytest.importorskip("httpx2")
    index_dir = tiny_build / "index"
    files = sorted((new_class_folder / "4").iterdir())
    batches = {"cli1": files[:6], "web1": files[6:12], "cli2": files[12:18], "web2": files[18:24]}
    service = SearchService(index_dir)
    with running_server(create_app(service)) as url, httpx.Client(base_url=url, timeout=120) as http:
        def web_add(label):
            return http.post("/add", files=[_upload(f) for f in batches[label]], data={"label": label})

        cli = _cli_add(index_dir, batches["cli1"], "cli1")
        assert cli.wait(timeout=300) == 0, cli.stderr.read()
        assert web_add("web1").status_code == 200  # on top of the CLI's add, not of its old copy
        assert http.get("/stats").json()["classes"]["cli1"] == 6
        cli = _cli_add(index_dir, files[24:25], "cli1")
        assert cli.wait(timeout=300) == 0, cli.stderr.read()
        found = http.post("/search", files=[_upload(files[24])], data={"labels": "cli1", "k": "7"})
        assert len(found.json()["results"][0]["neighbours"]) == 7  # the search saw the CLI's new version

        cli = _cli_add(index_dir, batches["cli2"], "cli2")
        with ThreadPoolExecutor(1) as pool:
            web = pool.submit(web_add, "web2")
            assert cli.wait(timeout=300) == 0, cli.stderr.read()
            assert web.result().status_code == 200, web.result().text
        served = http.get("/stats").json()["classes"]
    saved = HashIndex.load(index_dir)
    assert len(saved) == 120 + 25 and len(np.unique(saved.ids)) == 145
    for label in batches:
        size = 7 if label == "cli1" else 6
        assert served[label] == size and (saved.labels == saved.class_names.index(label)).sum() == size
    assert len(ShardReader(tiny_build / "shards")) == 145  # the store holds each batch once


def test_a_saved_version_that_does_not_load_is_reported_once_and_the_service_keeps_serving(tiny_build):
    import warnings

    index_dir = tiny_build / "index"
    service = SearchService(index_dir)
    writer = HashIndex.load(index_dir)
    writer.remove([0])
    broken = writer.save(index_dir, delta=True)
    (broken / "delta.h5").write_bytes(b"junk")
    with pytest.warns(UserWarning, match=r"the version saved since does not load .*delta\.h5"):
        assert service.stats()["ntotal"] == 120
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert service.stats()["ntotal"] == 120  # not loaded again
    writer.remove([1])
    writer.save(index_dir)
    stats = service.stats()
    assert stats["ntotal"] == 118 and stats["served"]["reloads"] == 1
