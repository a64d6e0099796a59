"""A Ray cluster of several nodes on this machine, every socket on 127.0.0.1, for the tests
and the benchmark (and for trying chatd's cluster without a network). `ray start` would
listen on every interface; `ray.cluster_utils.Cluster` with the loopback address does not.

RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 must be in the environment before Ray is imported:
Ray otherwise swaps 127.0.0.1 in the address for the host's routable IP, where nothing
listens, and waits forever (`LOOPBACK_ENV`, set by `loopback_env()` at the latest here)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def loopback_env(**more: str) -> None:
    """Before `import ray`; Ray's processes inherit it (so do `more` variables)."""
    os.environ.update({**LOOPBACK_ENV, **more})


@contextmanager
def loopback_cluster(nodes: int = 3, cpus: float = 1, object_store: int = 100 * 2**20) -> Iterator:
    """A head and `nodes - 1` workers of `cpus` CPUs each, no dashboard, this process
    connected as the driver; everything stopped at the end (Serve too)."""
    loopback_env()
    import ray
    from ray._private import ray_constants

    if ray_constants.ENABLE_RAY_CLUSTER:  # read at Ray's import, before loopback_env()
        raise RuntimeError("Ray was imported before chatd.cluster.local.loopback_env()")
    from ray import serve
    from ray.cluster_utils import Cluster

    node = {"node_ip_address": LOOPBACK, "num_cpus": cpus, "object_store_memory": object_store}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        port = cluster.address.rsplit(":", 1)[1]
        ray.init(address=f"{LOOPBACK}:{port}", log_to_driver=False, logging_level="warning")
        yield cluster
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        cluster.shutdown()
