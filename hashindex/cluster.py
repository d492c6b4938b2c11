"""Join or start the Ray cluster that distributed search and encoding run on.

Ray is the optional ``hashindex[distributed]`` extra and takes seconds to import: it is
imported only when a function here is called.
"""

from __future__ import annotations

import contextlib
import os

#: Ray namespace the named actors of :func:`hashapp.serve.serve` live in.
NAMESPACE = "hashindex"


def require_ray():
    """The ``ray`` module, or an ImportError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError("distributed search needs Ray: pip install 'hashindex[distributed]'") from exc
    return ray


def connect(address: str | None = None, *, num_cpus: int | None = None, **init_kwargs) -> str:
    """``ray.init`` for hashindex and return the cluster's GCS address.

    ``address`` (``"host:port"``, ``"auto"``, ``"ray://host:10001"``) joins an existing
    cluster; ``None`` starts a local Ray instance without the dashboard whose processes all
    listen on 127.0.0.1 only. Does nothing if Ray is already initialised in this process.
    """
    ray = require_ray()
    if not ray.is_initialized():
        if address:
            ray.init(address=address, namespace=NAMESPACE, **init_kwargs)
        else:
            with _ray_local_only():
                ray.init(num_cpus=num_cpus, namespace=NAMESPACE, _node_ip_address="127.0.0.1",
                         include_dashboard=False, **init_kwargs)
    return ray.get_runtime_context().gcs_address


@contextlib.contextmanager
def _ray_local_only():
    """Keep a Ray instance started inside this block on the loopback interface.

    Ray replaces a loopback ``_node_ip_address`` by the machine's routable IP, and its
    servers then listen on every interface, unless its local-only mode is on (the default
    on macOS and Windows). That mode is read from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``: the
    processes Ray spawns read the variable, this process the constant it was parsed into.
    """
    from ray._private import ray_constants

    variable = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved = os.environ.get(variable), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[variable] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]
