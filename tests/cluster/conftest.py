"""A Ray cluster of three nodes on loopback (a head and two workers, small object stores, no
dashboard), with chatd deployed on it once per session: two SmolLM2 replicas, one thread
each. Every Ray socket listens on 127.0.0.1: `ray.cluster_utils.Cluster` binds what
`ray start` would open on every interface (research/scale-out-ray.md, pitfall 2)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from chatd.cluster.local import LOOPBACK, loopback_cluster, loopback_env
from chatd.config import load_settings
from chatd.models.sources import SMOLLM2_ID, resolve
from tests.conftest import free_port, unavailable, wait_until

# Autoscaling metrics every 0.5 s instead of 10 s, for the autoscaling test, from the
# replicas (which report while idle too; an idle handle's last report lingers). Set before
# Ray is imported: it reads them once, and its processes inherit them.
ENV = {
    "RAY_SERVE_COLLECT_AUTOSCALING_METRICS_ON_HANDLE": "0",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
}
loopback_env(**ENV)  # before any test module here imports Ray
# Model ids beside the default, all SmolLM2's file: three for the model-affinity test, one
# for the 503 of a model still loading.
AFFINITY_MODELS = ("smol-a", "smol-b", "smol-c")
LOADING_MODEL = "smol-loading"
MAX_QUEUE = 4  # a request with n above it is refused at once: the 429 test
REPLICA_PREFIX = "SERVE_REPLICA::chatd#ChatdReplica#"


def cluster_settings(**changes):
    path = resolve(SMOLLM2_ID, Path.home() / ".cache" / "chatd").path
    given = {
        "models": [SMOLLM2_ID, *(f"{m}={path}" for m in (*AFFINITY_MODELS, LOADING_MODEL))],
        "threads": 1,
        "parallel": 2,
        "ctx": 1024,
        "max_queue": MAX_QUEUE,
        "max_n": 8,
        "pull": "never",
        "cache_url": "memory",
        "replicas": 2,
        "host": LOOPBACK,
        "port": free_port(),
    }
    return load_settings({**given, **changes})


class RayCluster:
    def __init__(self, ray, cluster, settings):
        self.ray, self.cluster, self.settings = ray, cluster, settings
        self.url = f"http://{LOOPBACK}:{settings.port}"

    def replica_names(self) -> list[str]:
        """The replicas' actor names (a killed actor's name is freed)."""
        named = self.ray.util.list_named_actors(all_namespaces=True)
        return [a["name"] for a in named if a["name"].startswith(REPLICA_PREFIX)]

    def replica(self, replica_id: str):
        return self.ray.get_actor(REPLICA_PREFIX + replica_id, namespace="serve")

    def stats(self) -> list[dict]:
        """Each live replica's record_routing_stats (models, loads, running)."""
        actors = [self.ray.get_actor(n, namespace="serve") for n in self.replica_names()]
        return self.ray.get([a.record_routing_stats.remote() for a in actors], timeout=30)

    def replica_states(self) -> dict[str, int]:
        """How many replicas are in each state: {"RUNNING": 2}, {"STARTING": 1, ...}."""
        from ray import serve

        app = serve.status().applications["chatd"]
        states = app.deployments["ChatdReplica"].replica_states
        return {state: n for state, n in states.items() if n}

    def deploy(self, settings, autoscaling=None) -> None:
        from chatd.cluster import deploy

        deploy.start(settings, autoscaling)
        self.settings = settings
        wait_until(self.healthy, 180, "chatd on the cluster to answer /health")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False


@pytest.fixture(scope="session")
def ray_cluster():
    try:
        import ray
    except ImportError:
        unavailable("ray[serve] is not installed: pip install -e '.[cluster]'")

    with loopback_cluster(nodes=3) as cluster:
        running = RayCluster(ray, cluster, cluster_settings())
        running.deploy(running.settings)
        yield running
