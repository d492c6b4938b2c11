"""``ShardedHashIndex``: one shard store searched by many Ray actors as if it were one HashIndex.

Each actor (a :class:`ShardServer`) owns a contiguous group of the store's shard files and
loads them itself from the shared file system (a ``ShardReader`` over its files; nothing is
shipped through the driver), into a local :class:`~hashindex.HashIndex`. A query batch is
put in the object store once, every actor searches its group, and the driver merges the
per-group top-k into the global top-k ordered by ``(distance, id)``.

Equality with one local index over the same store
-------------------------------------------------
Faiss's CPU flat search ranks equal distances by row, and a store's ids increase with the
row (shards are written in id order), so a single ``HashIndex.from_shards`` ranks by
``(distance, id)``. Each group ranks the same way, and merging by ``(distance, id)`` gives
exactly the single index's ``search`` (distances *and* ids), hence its ``vote``.
Approximate specs (IVF, HNSW, MultiHash) are built per group, so they are only as close
to the single index as two approximate indexes over different partitions are.

Rerank: the candidate pool is the global pool
---------------------------------------------
``HashIndex.search_rerank`` reranks the ``candidates`` Hamming-nearest codes of the whole
index. Reranking each group's own ``candidates`` nearest and merging would rerank a
*larger* pool (up to ``groups x candidates`` codes, a superset of the global pool) and can
return different neighbours. So ``search_rerank`` works in two rounds:

1. *coarse*: every group returns its ``candidates`` nearest ``(distance, id)`` pairs; the
   driver merges them and keeps, per query, the last pair of the global pool (the bound);
2. *fine*: every group reranks by Euclidean distance only its codes at or below that bound
   (= the global pool restricted to the group, from a cached copy of round 1) and returns
   its top-k; the driver merges them by ``(euclidean, hamming, id)`` (the order the single
   index's stable rerank keeps).

Only ids and distances cross the network; features stay on the actors. With ``radius``
the pool (every code within the radius) does not depend on the other groups, so one round
suffices. ``pool="shard"`` trades exactness for one round trip (per-group pools).

Faults
------
Actors are created with ``max_restarts`` / ``max_task_retries``: an actor whose process
dies is restarted by Ray, reloads its shard files in ``__init__`` (checking them against
the manifest) and the interrupted call is retried. Once the restarts are used up, or if a
call exceeds ``timeout_s``, the query raises :class:`ShardUnavailableError` naming the
shard files, never a silently shorter result: every reply also carries the group's record
count, which must match the manifest.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections import OrderedDict, deque
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from .cluster import NAMESPACE, require_ray
from .codes import MISSING_DISTANCE, hamming
from .index import HashIndex
from .query_checks import check_candidates, check_queries, check_query_features, range_pool
from .rerank import rerank_euclidean
from .store import ShardError, ShardReader, StoreInfo, read_store_info
from .vote import majority_vote

try:  # Ray is the optional `hashindex[distributed]` extra
    import ray
    from ray import exceptions as ray_exceptions
except ImportError:  # pragma: no cover - exercised only without the extra
    ray = None
    ray_exceptions = None

#: Queries sent to the actors per round trip (bounds the memory of one fan-out).
DEFAULT_BATCH_SIZE = 4096
#: Query batches submitted ahead of the one being merged (search and vote).
DEFAULT_IN_FLIGHT = 4
_POOL_CACHE = 8  # coarse pools an actor keeps for the fine round
_POOLS = ("global", "shard")


class ShardUnavailableError(RuntimeError):
    """A shard group could not answer (actor dead after its restarts, load error, timeout)."""

    def __init__(self, message: str, group: int | None = None, files: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.group = group
        self.files = list(files)


def plan_shard_groups(info: StoreInfo, num_groups: int | None = None,
                      shards_per_group: int | None = None) -> list[list[str]]:
    """Split a store's shard files into contiguous groups of about equal record counts.

    Give ``num_groups`` (actors) or ``shards_per_group``; groups keep the store's order so
    that concatenating them gives back the store.
    """
    files = [s["file"] for s in info.shards]
    if not files:
        raise ShardError("the store holds no complete shard; nothing to serve")
    if (num_groups is None) == (shards_per_group is None):
        raise ValueError("give exactly one of num_groups and shards_per_group")
    if shards_per_group is not None:
        if shards_per_group <= 0:
            raise ValueError(f"shards_per_group must be positive, got {shards_per_group}")
        return [files[i : i + shards_per_group] for i in range(0, len(files), shards_per_group)]
    if num_groups <= 0:
        raise ValueError(f"num_groups must be positive, got {num_groups}")
    if num_groups > len(files):
        raise ValueError(f"the store has {len(files)} shard file(s), cannot spread them over {num_groups} "
                         "actors; write smaller shards (shard_size) or use fewer actors")
    counts = np.array([s["count"] for s in info.shards], dtype=np.float64)
    ends = np.cumsum(counts)
    # Cut at the shard boundary nearest to each 1/num_groups quantile of the records,
    # keeping at least one shard per group.
    bounds_at = np.concatenate([[0.0], ends])  # records before each possible cut
    cuts, start = [], 0
    for g in range(1, num_groups):
        target = ends[-1] * g / num_groups
        above = int(np.searchsorted(ends, target)) + 1  # first cut with >= target records before it
        cut = above - 1 if target - bounds_at[above - 1] < bounds_at[above] - target else above
        cut = min(max(cut, start + 1), len(files) - (num_groups - g))
        cuts.append(cut)
        start = cut
    bounds = [0, *cuts, len(files)]
    return [files[bounds[g] : bounds[g + 1]] for g in range(num_groups)]


# ---------------------------------------------------------------------------- actor side
class ShardServer:
    """The state of one actor: a local HashIndex over a group of shard files.

    Plain Python; :class:`ShardedHashIndex` runs it as a Ray actor. Reloading from the
    files is what makes a restarted actor whole again.
    """

    def __init__(self, directory: str, files: Sequence[str], spec: str = "flat", *, features: bool = True,
                 device: str = "cpu", threads: int | None = None, group: int = 0, num_groups: int = 1) -> None:
        if threads:
            faiss.omp_set_num_threads(int(threads))
        self.directory = Path(directory)
        self.files = list(files)
        self.group, self.num_groups = group, num_groups
        reader = ShardReader(self.directory, files=self.files)
        info = reader.info
        #: Records the manifest lists for this group; every reply carries ``len(index)`` to compare.
        self.expected = len(reader)
        fields = ["codes", "labels", "ids"] + (["features"] if features and info.feature_dim is not None else [])
        data = reader.read(fields)
        self.index = HashIndex(info.bits, spec, class_names=info.class_names, device=device)
        self.index.add(data["codes"], labels=data["labels"], features=data.get("features"), ids=data["ids"])
        # Codes are kept beside the Faiss index only for the rerank's Hamming tie-break.
        self._codes = data["codes"] if "features" in data else None
        self._pools: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def describe(self) -> dict:
        return {"group": self.group, "num_groups": self.num_groups, "files": self.files,
                "ntotal": len(self.index), "expected": self.expected, "bits": self.index.bits,
                "feature_dim": self.index.feature_dim, "class_names": self.index.class_names,
                "spec": str(self.index.spec), "device": self.index.device, "pid": os.getpid(),
                "host": socket.gethostname()}

    def search(self, packed: np.ndarray, k: int):
        D, rows = self.index.search_rows(packed, k)
        return len(self.index), D, self.index.rows_to_ids(rows), self.index.labels_of_rows(rows)

    def coarse(self, packed: np.ndarray, candidates: int, token: str):
        """Round 1 of the global-pool rerank: this group's ``candidates`` nearest (distance, id)."""
        D, rows = self.index.search_rows(packed, candidates)
        self._pools[token] = (D, rows)
        while len(self._pools) > _POOL_CACHE:
            self._pools.popitem(last=False)
        return len(self.index), D, self.index.rows_to_ids(rows)

    def rerank(self, packed: np.ndarray, features: np.ndarray, k: int, candidates: int, token: str | None,
               bound_D: np.ndarray | None, bound_I: np.ndarray | None):
        """Round 2: rerank this group's codes at or below the global pool's bound (no bound: its own pool)."""
        cached = self._pools.pop(token, None) if token else None
        D, rows = cached if cached is not None else self.index.search_rows(packed, candidates)
        if bound_D is not None:
            ids = self.index.rows_to_ids(rows)
            bD, bI = bound_D[:, None], bound_I[:, None]
            rows = np.where((rows >= 0) & ((D < bD) | ((D == bD) & (ids <= bI))), rows, -1)
        return self._rerank_rows(packed, features, rows, k)

    def rerank_radius(self, packed: np.ndarray, features: np.ndarray, k: int, radius: int):
        return self._rerank_rows(packed, features, range_pool(*self.index.range_search_rows(packed, radius)), k)

    def _rerank_rows(self, packed, features, pool, k):
        stored = self.index.features
        if stored is None:
            raise ValueError(f"shards {self.files} hold no features; search_rerank needs features")
        E, rows = rerank_euclidean(features, stored, pool, k)
        safe = np.maximum(rows, 0)
        H = hamming(packed[:, None, :], self._codes[safe])
        H[rows < 0] = MISSING_DISTANCE
        return len(self.index), E, H, self.index.rows_to_ids(rows), self.index.labels_of_rows(rows)


# ---------------------------------------------------------------------------- driver side
def merge_topk(k: int, keys: Sequence[np.ndarray], *payload: np.ndarray) -> list[np.ndarray]:
    """Merge per-group results (lists with one ``(nq, k_g)`` array per group) into the top ``k``.

    ``keys`` are the sort keys, most significant first (e.g. distances then ids); rows of
    every key and payload array are concatenated over groups, ordered by the keys, and cut
    to ``k``. Returns the cut keys followed by the cut payloads. A numpy lexsort rather than
    ``faiss.merge_knn_results``: ties must go by id, and the rerank merges on three keys.
    """
    cat = [np.concatenate(list(parts), axis=1) for parts in (*keys, *payload)]
    order = np.lexsort(tuple(reversed(cat[: len(keys)])), axis=1)[:, :k]
    return [np.take_along_axis(a, order, axis=1) for a in cat]


class ShardedHashIndex:
    """A shard store served by Ray actors, with :class:`~hashindex.HashIndex`'s search API.

    Build with :meth:`from_shards` (starts the actors) or :meth:`attach` (finds named actors
    started by ``hashindex serve``). ``search``, ``search_rerank`` and ``vote`` return what a
    single ``HashIndex.from_shards`` over the same store returns (see the module docstring).
    """

    def __init__(self, actors: list, descriptions: list[dict], *, timeout_s: float | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, in_flight: int = DEFAULT_IN_FLIGHT) -> None:
        self._actors = actors
        self._desc = descriptions
        #: Seconds one call to every actor may take before ShardUnavailableError (None: no limit).
        self.timeout_s = timeout_s
        #: Queries per round trip, and round trips submitted ahead while merging.
        self.batch_size = int(batch_size)
        self.in_flight = max(1, int(in_flight))
        first = descriptions[0]
        self.bits = first["bits"]
        self.feature_dim = first["feature_dim"]
        self.class_names = first["class_names"]
        self.spec = first["spec"]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_shards(cls, directory, *, num_actors: int | None = None, shards_per_actor: int | None = None,
                    spec: str = "flat", features: bool = True, device: str = "cpu", cpus_per_actor: float = 1,
                    gpus_per_actor: float = 0, threads: int | None = None, max_restarts: int = 3,
                    max_task_retries: int = 3, name: str | None = None, detached: bool = False,
                    timeout_s: float | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> "ShardedHashIndex":
        """Start one actor per shard group; each loads its files from ``directory`` (which every
        node must see at the same path). Give ``num_actors`` or ``shards_per_actor``; by default
        as many actors as the cluster has CPUs for, at most one per shard file.

        ``cpus_per_actor`` / ``gpus_per_actor`` are each actor's Ray resources (``device="gpu"``
        needs ``gpus_per_actor > 0`` for a GPU to be visible in the actor; fractions share one);
        ``threads`` is Faiss threads per actor (default ``max(1, cpus_per_actor)``). ``name`` makes the actors named (``name.i``, in
        namespace ``hashindex``) so other drivers can :meth:`attach`; ``detached`` lets them
        outlive this driver (cluster deployments).
        """
        require_ray()
        directory = Path(directory).resolve()
        info = read_store_info(directory)
        if num_actors is None and shards_per_actor is None:
            cpus = ray.cluster_resources().get("CPU", 1)
            fit = int(cpus // cpus_per_actor) if cpus_per_actor > 0 else len(info.shards)
            num_actors = max(1, min(len(info.shards), fit))
        groups = plan_shard_groups(info, num_actors, shards_per_actor)
        remote_cls = ray.remote(ShardServer)
        actors = []
        for g, files in enumerate(groups):
            options = dict(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor, max_restarts=max_restarts,
                           max_task_retries=max_task_retries)
            if name is not None:
                options.update(name=_actor_name(name, g), namespace=NAMESPACE)
            if detached:
                options["lifetime"] = "detached"
            actors.append(remote_cls.options(**options).remote(
                str(directory), files, spec, features=features, device=device,
                threads=threads or max(1, int(cpus_per_actor)), group=g, num_groups=len(groups)))
        descs = _gather([a.describe.remote() for a in actors], [{"group": g, "files": f} for g, f in enumerate(groups)],
                        "load", timeout_s)
        return cls(actors, descs, timeout_s=timeout_s, batch_size=batch_size)

    @classmethod
    def attach(cls, name: str, *, timeout_s: float | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE) -> "ShardedHashIndex":
        """Connect to the named actors another driver started with ``name`` (``ray.init`` first)."""
        require_ray()
        prefix = f"{name}."
        names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                       if a["namespace"] == NAMESPACE and a["name"].startswith(prefix))
        actors, gone = [], []
        for actor_name in names:
            try:
                actors.append(ray.get_actor(actor_name, namespace=NAMESPACE))
            except ValueError as exc:  # listed, then gone: Ray's listing lags a kill (a stop just before)
                gone.append((actor_name, exc))
        if not actors:  # none listed, or every listed one already stopped
            raise ShardUnavailableError(f"no actors named {prefix}* in Ray namespace {NAMESPACE!r}; "
                                        f"start them with `hashindex serve --name {name}`")
        if gone:
            actor_name, exc = gone[0]
            raise ShardUnavailableError(f"actor {actor_name} vanished while attaching: {exc}") from exc
        descs = _gather([a.describe.remote() for a in actors], [{"group": n, "files": []} for n in names],
                        "attach", timeout_s)
        order = np.argsort([d["group"] for d in descs])
        actors, descs = [actors[i] for i in order], [descs[i] for i in order]
        expected = descs[0]["num_groups"]
        if [d["group"] for d in descs] != list(range(expected)):
            raise ShardUnavailableError(f"actors {prefix}* cover groups {[d['group'] for d in descs]}, "
                                        f"expected 0..{expected - 1}")
        return cls(actors, descs, timeout_s=timeout_s, batch_size=batch_size)

    def shutdown(self) -> None:
        """Kill the actors (named or detached ones too)."""
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []

    # ------------------------------------------------------------------ state
    def __len__(self) -> int:
        return sum(d["expected"] for d in self._desc)

    @property
    def ntotal(self) -> int:
        return len(self)

    @property
    def groups(self) -> list[list[str]]:
        """The shard files each actor holds, in store order."""
        return [d["files"] for d in self._desc]

    def describe(self) -> list[dict]:
        """Live state of every actor (pid, host, record count, device), asked now."""
        return self._gather([a.describe.remote() for a in self._actors], "describe")

    def __repr__(self) -> str:
        return (f"ShardedHashIndex(bits={self.bits}, spec={self.spec!r}, ntotal={len(self)}, "
                f"actors={len(self._actors)})")

    # ------------------------------------------------------------------ search
    def search(self, codes, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Hamming kNN over every shard: ``(D, I)`` as :meth:`HashIndex.search` returns them."""
        D, I, _ = self._search_with_labels(codes, k)
        return D, I

    def vote(self, codes, k: int = 8, features=None, candidates: int = 1000, radius: int | None = None,
             pool: str = "global") -> np.ndarray:
        """Majority label over each query's ``k`` nearest neighbours, as :meth:`HashIndex.vote`."""
        if features is None:
            labels = self._search_with_labels(codes, k)[2]
        else:
            labels = self._rerank(codes, features, k, candidates, radius, pool)[2]
        return majority_vote(labels)

    def search_rerank(self, codes, features, k: int = 8, candidates: int = 1000, radius: int | None = None,
                      pool: str = "global") -> tuple[np.ndarray, np.ndarray]:
        """Coarse Hamming pool, fine Euclidean rerank, as :meth:`HashIndex.search_rerank`.

        ``pool="global"`` (default) reranks exactly the single index's pool in two rounds;
        ``pool="shard"`` reranks each group's own ``candidates`` nearest in one round (a larger
        pool: results may differ from the single index). See the module docstring.
        """
        E, I, _ = self._rerank(codes, features, k, candidates, radius, pool)
        return E, I

    def _search_with_labels(self, codes, k):
        packed = self._check_queries(codes, k)
        out = [], [], []
        # Up to ``in_flight`` batches are submitted ahead, so actors search the next batch
        # while the driver merges this one; Ray runs each actor's calls in submission order.
        window: deque = deque()
        batches = self._batches(packed)
        while True:
            for start, stop, q_ref in batches:
                window.append([a.search.remote(q_ref, k) for a in self._actors])
                if len(window) >= self.in_flight:
                    break
            if not window:
                break
            replies = self._gather(window.popleft(), "search")
            D, I, L = merge_topk(k, [[r[1] for r in replies], [r[2] for r in replies]], [r[3] for r in replies])
            for acc, part in zip(out, (D, I, L)):
                acc.append(part)
        return tuple(np.concatenate(acc) if acc else np.empty((0, k), dtype) for acc, dtype
                     in zip(out, (np.int32, np.int64, np.int64)))

    def _rerank(self, codes, features, k, candidates, radius, pool):
        packed = self._check_queries(codes, k)
        if pool not in _POOLS:
            raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}")
        if self.feature_dim is None:
            raise ValueError("the served shards hold no features; search_rerank needs features")
        q = check_query_features(features, len(packed), self.feature_dim)
        if radius is None:
            candidates = check_candidates(candidates)
        out = [], [], []
        for start, stop, q_ref in self._batches(packed):
            f_ref = ray.put(np.ascontiguousarray(q[start:stop]))
            if radius is not None:
                calls = [a.rerank_radius.remote(q_ref, f_ref, k, radius) for a in self._actors]
            elif pool == "shard":
                calls = [a.rerank.remote(q_ref, f_ref, k, candidates, None, None, None) for a in self._actors]
            else:
                token = uuid.uuid4().hex
                coarse = self._gather([a.coarse.remote(q_ref, candidates, token) for a in self._actors], "coarse")
                bD, bI = _pool_bound(candidates, coarse)
                calls = [a.rerank.remote(q_ref, f_ref, k, candidates, token, bD, bI) for a in self._actors]
            replies = self._gather(calls, "rerank")
            E, _, I, L = merge_topk(k, [[r[1] for r in replies], [r[2] for r in replies], [r[3] for r in replies]],
                                    [r[4] for r in replies])
            for acc, part in zip(out, (E, I, L)):
                acc.append(part)
        return tuple(np.concatenate(acc) if acc else np.empty((0, k), dtype) for acc, dtype
                     in zip(out, (np.float32, np.int64, np.int64)))

    # ------------------------------------------------------------------ plumbing
    def _check_queries(self, codes, k) -> np.ndarray:
        packed = check_queries(codes, k, self.bits)
        if not self._actors:
            raise ShardUnavailableError("this ShardedHashIndex was shut down")
        return packed

    def _batches(self, packed: np.ndarray):
        """``(start, stop, ObjectRef)`` per query batch: each batch is put in the object store once."""
        for start in range(0, len(packed), self.batch_size):
            stop = min(len(packed), start + self.batch_size)
            yield start, stop, ray.put(packed[start:stop])

    def _gather(self, refs: list, what: str) -> list:
        return _gather(refs, self._desc, what, self.timeout_s)


def _gather(refs: list, descs: list[dict], what: str, timeout_s: float | None) -> list:
    """Results of one call per group, in group order; a failure names the group's shard files.

    Every reply starts with (or, for ``describe``, holds) the group's record count, checked
    against the manifest's, so a reloaded actor can never answer from fewer codes.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    replies = []
    for desc, ref in zip(descs, refs):
        where = f"shard group {desc['group']} ({', '.join(desc['files']) or 'see describe()'})"
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            reply = ray.get(ref, timeout=timeout)
        except ray_exceptions.GetTimeoutError as exc:
            raise ShardUnavailableError(f"{what}: {where} did not answer within {timeout_s} s",
                                        desc["group"], desc["files"]) from exc
        except ray_exceptions.RayActorError as exc:
            raise ShardUnavailableError(
                f"{what}: the actor serving {where} died and was not restarted; refusing to answer "
                f"without these shards. Ray says: {_first_lines(exc)}", desc["group"], desc["files"]) from exc
        except ray_exceptions.RayTaskError as exc:
            raise ShardUnavailableError(f"{what}: {where} failed: {exc.cause!r}",
                                        desc["group"], desc["files"]) from exc
        if isinstance(reply, dict):
            count, expected = reply["ntotal"], reply["expected"]
        else:
            count, expected = reply[0], desc["expected"]
        if count != expected:
            raise ShardUnavailableError(f"{what}: {where} holds {count} codes, the manifest lists {expected}",
                                        desc["group"], desc["files"])
        replies.append(reply)
    return replies


def _first_lines(exc: Exception, limit: int = 600) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _pool_bound(candidates: int, coarse: list) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the last ``(distance, id)`` of the global top-``candidates`` pool
    (the maximum values when the whole index holds fewer codes than ``candidates``)."""
    D, I = merge_topk(candidates, [[r[1] for r in coarse], [r[2] for r in coarse]])
    last_D, last_I = D[:, -1].copy(), I[:, -1].copy()
    short = last_I < 0
    last_D[short] = np.iinfo(np.int32).max
    last_I[short] = np.iinfo(np.int64).max
    return last_D, last_I


def _actor_name(name: str, group: int) -> str:
    return f"{name}.{group:05d}"
