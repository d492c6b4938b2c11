"""Start a :class:`~hashindex.distributed.ShardedHashIndex` on Ray, find it again, stop it.

On an existing cluster (every node sees the shard directory at the same path)::

    ray start --head --port 6379                      # head node
    ray start --address HEAD:6379                     # each worker node
    hashindex serve /data/shards --address HEAD:6379 --name products --actors 16
    # ... the actors are detached: they outlive the command. From any driver:
    #     connect("HEAD:6379"); index = ShardedHashIndex.attach("products")
    hashindex serve --stop --address HEAD:6379 --name products

On one machine, without a cluster::

    hashindex serve /data/shards --name products --actors 4 --num-cpus 4
    # starts a local Ray instance (bound to 127.0.0.1), prints its address, serves until Ctrl-C

Python: ``index = serve(shards_dir, address=None, num_actors=4)`` returns the index directly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hashindex.cluster import connect
from hashindex.gpu import DEVICES

if TYPE_CHECKING:
    from hashindex.distributed import ShardedHashIndex

# hashindex.distributed imports Ray (seconds); it is imported only when a command runs, so
# that `hashindex --help` and the other commands stay fast.


def serve(shards_dir, *, name: str = "hashindex", address: str | None = None, detached: bool | None = None,
          num_cpus: int | None = None, **index_kwargs) -> "ShardedHashIndex":
    """Connect (see :func:`connect`) and start named actors over ``shards_dir``.

    Actors are detached when joining a cluster (they outlive this driver), attached to this
    process on a local instance. ``index_kwargs`` go to :meth:`ShardedHashIndex.from_shards`.
    """
    from hashindex.distributed import ShardedHashIndex, ShardUnavailableError

    connect(address, num_cpus=num_cpus)
    try:
        ShardedHashIndex.attach(name)
    except ShardUnavailableError:
        pass
    else:
        raise ValueError(f"actors named {name!r} are already serving; stop them first "
                         f"(`hashindex serve --stop --name {name}`) or choose another --name")
    if detached is None:
        detached = address is not None
    return ShardedHashIndex.from_shards(shards_dir, name=name, detached=detached, **index_kwargs)


def stop(name: str = "hashindex", address: str | None = None) -> int:
    """Kill the actors served under ``name``; returns how many there were."""
    from hashindex.distributed import ShardedHashIndex

    connect(address)
    index = ShardedHashIndex.attach(name)
    count = len(index.groups)
    index.shutdown()
    return count


@click.command("serve")
@click.argument("shards", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--address", default=None,
              help="Ray cluster to join (host:port, auto, ray://host:10001). Default: start a local Ray "
                   "instance and serve until Ctrl-C.")
@click.option("--name", default="hashindex", show_default=True, help="Actor name prefix clients attach to.")
@click.option("--actors", "num_actors", type=click.IntRange(min=1), default=None,
              help="Number of actors (default: one per shard file).")
@click.option("--shards-per-actor", type=click.IntRange(min=1), default=None)
@click.option("--spec", default="flat", show_default=True, help="Index spec each actor builds.")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--cpus-per-actor", type=float, default=1.0, show_default=True)
@click.option("--gpus-per-actor", type=float, default=0.0, show_default=True,
              help="GPU share per actor; needed for --device gpu.")
@click.option("--num-cpus", type=click.IntRange(min=1), default=None, help="CPUs of a local Ray instance.")
@click.option("--no-features", is_flag=True, help="Do not load F7 features (no rerank; less memory).")
@click.option("--stop", "stop_", is_flag=True, help="Stop the actors served under --name instead.")
def serve_command(shards, address, name, num_actors, shards_per_actor, spec, device, cpus_per_actor,
                  gpus_per_actor, num_cpus, no_features, stop_):
    """Serve the shard store SHARDS from Ray actors (see `hashapp.serve`)."""
    from hashindex.distributed import ShardUnavailableError
    from hashindex.store import ShardError

    if shards is None and not stop_:
        raise click.UsageError("give the SHARDS directory to serve (or --stop)")
    if num_actors is not None and shards_per_actor is not None:
        raise click.UsageError("give --actors or --shards-per-actor, not both")
    try:
        if stop_:
            click.echo(f"stopped {stop(name, address)} actor(s) named {name}.*")
            return
        index = serve(shards, name=name, address=address, num_cpus=num_cpus, num_actors=num_actors,
                      shards_per_actor=shards_per_actor, spec=spec, device=device, cpus_per_actor=cpus_per_actor,
                      gpus_per_actor=gpus_per_actor, features=not no_features)
    except (ShardUnavailableError, ShardError, ValueError, ConnectionError) as exc:
        raise click.ClickException(str(exc)) from exc
    gcs = connect(address)
    click.echo(f"serving {len(index)} codes from {shards} on {len(index.groups)} actor(s) named {name}.*")
    click.echo(f"clients: hashindex.cluster.connect({gcs!r}); ShardedHashIndex.attach({name!r})")
    if address is None:
        click.echo("local Ray instance: serving until Ctrl-C (it uses Ray token auth: run clients with "
                   "RAY_AUTH_MODE=token; the token is in ~/.ray/auth_token)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            index.shutdown()


if __name__ == "__main__":
    serve_command()
