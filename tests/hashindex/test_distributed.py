"""ShardedHashIndex on a local 2-CPU Ray instance: equal to one HashIndex over the same store,
for search, rerank and vote; actors killed mid-query are restarted or fail loudly."""

import os
import shutil
import signal
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'hashindex[distributed]')")

from hashindex import HashIndex, ShardWriter, read_store_info  # noqa: E402
from hashindex.datasets import synthetic_codes  # noqa: E402
from hashindex.distributed import (  # noqa: E402
    ShardedHashIndex,
    ShardUnavailableError,
    merge_topk,
    plan_shard_groups,
)
from hashapp.serve import serve, stop  # noqa: E402
from hashindex.store import StoreInfo  # noqa: E402
from hashindex.testing import assert_same_knn, brute_force_knn, start_in_thread  # noqa: E402

BITS = 32
# Fractional CPUs: every actor of every test fits in the 2-CPU instance at once.
ACTOR = dict(cpus_per_actor=0.25, timeout_s=120)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """2400 clustered 32-bit codes (many Hamming ties) with labels, float16 features and ids
    with gaps, in 8 shards of 300."""
    rng = np.random.default_rng(7)
    data = synthetic_codes(2400, 150, BITS, kind="clustered", n_clusters=12, flip_probability=0.06, seed=3)
    features = rng.normal(size=(2550, 8)).astype(np.float32)
    # Duplicate a few feature vectors so Euclidean ties occur in the rerank too.
    features[100:110] = features[0]
    ids = np.cumsum(rng.integers(1, 5, size=2400))
    directory = tmp_path_factory.mktemp("store") / "shards"
    with ShardWriter(directory, BITS, feature_dim=8, shard_size=300, class_names=[f"c{i}" for i in range(12)]) as w:
        w.add(data.database, labels=data.database_labels, features=features[:2400], ids=ids)
    return {"dir": directory, "codes": data.database, "ids": ids, "queries": data.queries,
            "query_features": features[2400:], "query_labels": data.query_labels}


@pytest.fixture(scope="module")
def single(store):
    return HashIndex.from_shards(store["dir"], progress=False)


@pytest.fixture(scope="module")
def sharded(ray_local, store):
    index = ShardedHashIndex.from_shards(store["dir"], num_actors=3, batch_size=40, **ACTOR)
    yield index
    index.shutdown()


# ---------------------------------------------------------------------------- loopback only
def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                with open(f"/proc/{stat}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(stat))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _listening_addresses(pids: set[int]) -> list[str]:
    """Local addresses of the TCP sockets in LISTEN state that the processes ``pids`` hold."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.read().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ip = bytes.fromhex(fields[1].split(":")[0])
                    # /proc prints each 32-bit word of the address in host (little-endian) order
                    words = [ip[i:i + 4][::-1] for i in range(0, len(ip), 4)]
                    addresses.append(b"".join(words).hex())
    return addresses


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc")
def test_local_instance_listens_on_loopback_only(ray_local):
    loopback = {"7f000001", "00000000000000000000ffff7f000001", "00000000000000000000000000000001"}
    addresses = _listening_addresses(_descendants(os.getpid()) | {os.getpid()})
    assert addresses, "found no listening socket of the Ray processes"
    assert set(addresses) <= loopback, f"Ray listens beyond loopback: {sorted(set(addresses) - loopback)}"


# ---------------------------------------------------------------------------- planning / merging
def _info(counts):
    return StoreInfo(bits=8, shards=[{"file": f"part-{i:05d}.h5", "count": c, "first_id": 0}
                                     for i, c in enumerate(counts)])


def test_plan_shard_groups_is_contiguous_and_balanced():
    info = _info([100, 100, 100, 100, 10, 10, 300])
    groups = plan_shard_groups(info, num_groups=3)
    assert sum(groups, []) == [s["file"] for s in info.shards], "groups keep the store's order"
    count = {s["file"]: s["count"] for s in info.shards}
    assert [sum(count[f] for f in g) for g in groups] == [200, 220, 300]
    assert plan_shard_groups(info, shards_per_group=3) == [
        ["part-00000.h5", "part-00001.h5", "part-00002.h5"],
        ["part-00003.h5", "part-00004.h5", "part-00005.h5"], ["part-00006.h5"]]
    assert [len(g) for g in plan_shard_groups(_info([1, 1, 1000]), num_groups=3)] == [1, 1, 1]
    with pytest.raises(ValueError, match="3 shard file"):
        plan_shard_groups(_info([5, 5, 5]), num_groups=4)


def test_merge_topk_orders_by_distance_then_id():
    D = [np.array([[1, 3, 3]]), np.array([[0, 3, 2147483647]])]
    I = [np.array([[10, 7, 40]]), np.array([[5, 2, -1]])]
    D_m, I_m = merge_topk(4, [D, I])
    np.testing.assert_array_equal(D_m, [[0, 1, 3, 3]])
    np.testing.assert_array_equal(I_m, [[5, 10, 2, 7]])


# ---------------------------------------------------------------------------- equality with one index
def test_actors_load_their_own_shard_groups(sharded, store):
    desc = sharded.describe()
    assert [d["group"] for d in desc] == [0, 1, 2]
    assert sum(d["ntotal"] for d in desc) == len(sharded) == 2400
    assert sum(sharded.groups, []) == [s["file"] for s in read_store_info(store["dir"]).shards]
    assert len({d["pid"] for d in desc}) == 3 and os.getpid() not in {d["pid"] for d in desc}


@pytest.mark.parametrize("k", [1, 8, 100, 3000])
def test_search_equals_single_index(sharded, single, store, k):
    q = store["queries"]
    D, I = sharded.search(q, k)
    D_ref, I_ref = single.search(q, k)
    # Identical, ties included: both rank equal distances by id.
    np.testing.assert_array_equal(D, D_ref)
    np.testing.assert_array_equal(I, I_ref)
    # And right: the brute-force oracle over the raw codes agrees (up to ties).
    D_bf, rows_bf = brute_force_knn(q, store["codes"], k)
    I_bf = np.where(rows_bf >= 0, store["ids"][np.maximum(rows_bf, 0)], -1)
    assert_same_knn(D_bf, I_bf, D, I)


def test_vote_equals_single_index(sharded, single, store):
    q, qf = store["queries"], store["query_features"]
    for k in (1, 8, 25):
        np.testing.assert_array_equal(sharded.vote(q, k), single.vote(q, k))
        np.testing.assert_array_equal(sharded.vote(q, k, features=qf, candidates=60),
                                      single.vote(q, k, features=qf, candidates=60))
    votes = sharded.vote(q, 8)
    assert (votes == store["query_labels"]).mean() > 0.9, "clustered codes vote for their own cluster"


@pytest.mark.parametrize("candidates", [3, 8, 37, 500, 5000])
def test_search_rerank_equals_single_index(sharded, single, store, candidates):
    q, qf = store["queries"], store["query_features"]
    for k in (1, 8):
        E, I = sharded.search_rerank(q, qf, k, candidates=candidates)
        E_ref, I_ref = single.search_rerank(q, qf, k, candidates=candidates)
        np.testing.assert_array_equal(E, E_ref)
        np.testing.assert_array_equal(I, I_ref)


@pytest.mark.parametrize("radius", [0, 2, 6])
def test_search_rerank_by_radius_equals_single_index(sharded, single, store, radius):
    q, qf = store["queries"], store["query_features"]
    E, I = sharded.search_rerank(q, qf, 8, radius=radius)
    E_ref, I_ref = single.search_rerank(q, qf, 8, radius=radius)
    np.testing.assert_array_equal(E, E_ref)
    np.testing.assert_array_equal(I, I_ref)


def test_per_shard_pools_rerank_a_superset(sharded, single, store):
    q, qf = store["queries"], store["query_features"]
    E_shard, _ = sharded.search_rerank(q, qf, 8, candidates=20, pool="shard")
    E_global, _ = single.search_rerank(q, qf, 8, candidates=20)
    # Each group's 20 nearest together contain the global 20 nearest: never worse, here often better.
    assert np.all(E_shard <= E_global)
    assert np.any(E_shard < E_global)
    # With every code in every pool, the two designs coincide.
    E_all, I_all = sharded.search_rerank(q, qf, 8, candidates=3000, pool="shard")
    E_ref, I_ref = single.search_rerank(q, qf, 8, candidates=3000)
    np.testing.assert_array_equal(E_all, E_ref)
    np.testing.assert_array_equal(I_all, I_ref)


def test_query_batches_do_not_change_results(sharded, store):
    q = store["queries"]
    sharded.batch_size, before = 7, sharded.batch_size
    try:
        D7, I7 = sharded.search(q, 10)
    finally:
        sharded.batch_size = before
    D, I = sharded.search(q, 10)
    np.testing.assert_array_equal(D7, D)
    np.testing.assert_array_equal(I7, I)


def test_bad_arguments_are_refused(sharded, store):
    q, qf = store["queries"], store["query_features"]
    with pytest.raises(ValueError, match="k must be a positive integer"):
        sharded.search(q, 0)
    with pytest.raises(ValueError, match="pool must be one of"):
        sharded.search_rerank(q, qf, pool="everywhere")
    with pytest.raises(ValueError, match=r"query features: expected shape \(150, 8\)"):
        sharded.search_rerank(q, qf[:, :4])
    with pytest.raises(ValueError, match="wrong code width"):
        sharded.search(np.zeros((2, 3), np.uint8), 4)


def test_without_features_rerank_is_refused(ray_local, store):
    index = ShardedHashIndex.from_shards(store["dir"], num_actors=2, features=False, **ACTOR)
    try:
        assert index.search(store["queries"][:3], 2)[1].shape == (3, 2)
        with pytest.raises(ValueError, match="hold no features"):
            index.search_rerank(store["queries"][:3], store["query_features"][:3])
    finally:
        index.shutdown()


def test_a_shard_that_disagrees_with_the_manifest_is_named(ray_local, store, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(store["dir"], broken)
    shutil.copy(broken / "part-00002.h5", broken / "part-00001.h5")  # right format, wrong records
    with pytest.raises(ShardUnavailableError, match="part-00001.h5") as info:
        ShardedHashIndex.from_shards(broken, num_actors=4, max_restarts=0, **ACTOR)
    assert "part-00001.h5" in info.value.files


# ---------------------------------------------------------------------------- named actors / serve
def test_serve_attach_and_stop(ray_local, store, single):
    index = serve(store["dir"], name="test-serve", num_actors=2, **ACTOR)
    try:
        attached = ShardedHashIndex.attach("test-serve")
        assert attached.groups == index.groups and len(attached) == 2400
        np.testing.assert_array_equal(attached.search(store["queries"], 8)[1], single.search(store["queries"], 8)[1])
        with pytest.raises(ValueError, match="already serving"):
            serve(store["dir"], name="test-serve", num_actors=2, **ACTOR)
    finally:
        assert stop("test-serve") == 2
    with pytest.raises(ShardUnavailableError, match="no actors named test-serve"):
        ShardedHashIndex.attach("test-serve")


# ---------------------------------------------------------------------------- faults
def _kill_during(index, victim_group, call):
    """Run ``call`` in a thread and SIGKILL the victim actor's process while it is running."""
    pid = index.describe()[victim_group]["pid"]
    thread, out = start_in_thread(call)
    time.sleep(0.3)
    assert thread.is_alive(), "the query finished before the kill; make it longer"
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=300)
    return pid, out


def _long_queries(store, n=3000):
    # Many small round trips keep the call running for seconds, so the kill lands inside it.
    return np.tile(store["queries"], (n // len(store["queries"]) + 1, 1))[:n]


@pytest.mark.slow
def test_killed_actor_is_restarted_from_its_shards_mid_query(ray_local, store, single):
    index = ShardedHashIndex.from_shards(store["dir"], num_actors=2, batch_size=10, max_restarts=2,
                                         max_task_retries=-1, **ACTOR)
    try:
        q = _long_queries(store)
        pid, out = _kill_during(index, 1, lambda: index.search(q, 8))
        assert "error" not in out, out.get("error")
        D_ref, I_ref = single.search(q, 8)
        np.testing.assert_array_equal(out["result"][0], D_ref)
        np.testing.assert_array_equal(out["result"][1], I_ref)
        after = index.describe()[1]
        assert after["pid"] != pid and after["ntotal"] == after["expected"], "restarted and reloaded"
    finally:
        index.shutdown()


@pytest.mark.slow
def test_killed_actor_without_restarts_fails_naming_its_shards(ray_local, store):
    index = ShardedHashIndex.from_shards(store["dir"], num_actors=2, batch_size=10, max_restarts=0, **ACTOR)
    try:
        _, out = _kill_during(index, 0, lambda: index.search(_long_queries(store), 8))
        error = out.get("error")
        assert isinstance(error, ShardUnavailableError), f"expected a ShardUnavailableError, got {out}"
        assert error.group == 0 and error.files == index.groups[0]
        assert "part-00000.h5" in str(error) and "died" in str(error)
        with pytest.raises(ShardUnavailableError, match="shard group 0"):
            index.search(store["queries"][:2], 8)  # and every later query too: never a shorter result
    finally:
        index.shutdown()


def test_serve_command_starts_attaches_and_stops(ray_local, store):
    from click.testing import CliRunner

    from hashapp.cli import main

    runner = CliRunner()
    # Ray is already initialised here, so the command joins it and returns (no blocking loop).
    result = runner.invoke(main, ["serve", str(store["dir"]), "--name", "cli-serve", "--actors", "2",
                                  "--cpus-per-actor", "0.25", "--address", "auto"])
    assert result.exit_code == 0, result.output
    assert "serving 2400 codes" in result.output and "2 actor(s) named cli-serve.*" in result.output
    assert len(ShardedHashIndex.attach("cli-serve").groups) == 2
    result = runner.invoke(main, ["serve", "--stop", "--name", "cli-serve"])
    assert result.exit_code == 0 and "stopped 2 actor(s)" in result.output
    result = runner.invoke(main, ["serve", "--stop", "--name", "cli-serve"])
    assert result.exit_code != 0 and "no actors named cli-serve" in result.output
