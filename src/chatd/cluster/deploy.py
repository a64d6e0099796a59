"""The Serve application from chatd's Settings, and the two ways to deploy it: `chatd serve
--cluster ADDRESS` (this process drives the deployment and removes it on Ctrl-C) and
`chatd cluster config` (a config file for `serve deploy`, Ray's production path, whose
import_path is `build` below)."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import yaml
from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from chatd.cluster.ingress import ChatdIngress
from chatd.cluster.replica import ChatdReplica
from chatd.config import Settings, SettingsError, load_settings

APP = "chatd"
PREFIX_ROUTER = "chatd.cluster.routing:ChatdRouter"
# The ingress only forwards: the replicas bound the work (--parallel, --max-queue). Serve's
# default of 5 ongoing requests per replica would hold the sixth stream at the proxy.
INGRESS_MAX_ONGOING = 100_000
# Not written into a config file: keys go to the nodes by --api-key-file.
UNSHARED = {"cluster", "config", "api_keys"}


def application(settings: Settings, autoscaling: dict[str, Any] | None = None) -> Application:
    """The ingress and the replicas. `autoscaling` overrides Serve's autoscaling settings
    (its delays and intervals: the tests shorten them)."""
    check_shared_cache(settings)
    replicas = serve.deployment(ChatdReplica).options(**_replica_options(settings, autoscaling))
    ingress = serve.deployment(ChatdIngress).options(
        num_replicas=settings.ingress_replicas, max_ongoing_requests=INGRESS_MAX_ONGOING
    )
    return ingress.bind(settings, replicas.bind(settings))


def _replica_options(settings: Settings, autoscaling: dict[str, Any] | None) -> dict[str, Any]:
    s = settings
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": s.replica_cpus or s.threads or 1},
        # chatd's own queue answers 429 past --max-queue: Serve must not refuse first.
        "max_ongoing_requests": s.parallel + s.max_queue,
        "health_check_period_s": 2,  # a lost replica is replaced in seconds, not tens
        "graceful_shutdown_timeout_s": s.shutdown_timeout,
    }
    if s.min_replicas is not None:
        options["autoscaling_config"] = {
            "min_replicas": s.min_replicas,
            "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.parallel,
            **(autoscaling or {}),
        }
    else:
        options["num_replicas"] = s.replicas
    if s.prefix_routing:
        options["request_router_config"] = RequestRouterConfig(
            request_router_class=PREFIX_ROUTER,
            request_router_kwargs={
                # Load wins over the cached prefix once one replica has a quarter of its
                # slots (at least 2) more requests than another. At a spread of --parallel
                # conversations queued on one replica while another had free slots; at 1, a
                # queue length Serve had cached moved a lone conversation between replicas.
                "imbalanced_threshold": max(2, s.parallel // 4),
                # The tree of routed prompts is trimmed (LRU) past 400k characters.
                "do_eviction": True,
            },
        )
    return options


def check_shared_cache(settings: Settings) -> None:
    """Several ingress replicas must share one response cache: Redis (or none)."""
    url = settings.cache_url or "sqlite"
    if (
        settings.ingress_replicas > 1
        and url != "off"
        and not url.startswith(("redis://", "rediss://"))
    ):
        raise SettingsError(
            f"--ingress-replicas {settings.ingress_replicas} needs a response cache they "
            f"share: --cache-url redis://HOST:6379/0 (or off), not {url}, which each ingress "
            "would keep for itself"
        )


def start(settings: Settings, autoscaling: dict[str, Any] | None = None) -> None:
    """Deploy on the Ray cluster this process is connected to; the HTTP proxy listens on the
    head node at --host:--port."""
    serve.start(
        proxy_location="HeadOnly", http_options={"host": settings.host, "port": settings.port}
    )
    serve.run(application(settings, autoscaling), name=APP, route_prefix="/", blocking=False)


def run(settings: Settings) -> None:
    """`chatd serve --cluster ADDRESS`: deploy, wait for Ctrl-C or SIGTERM, take it down."""
    import ray

    check_shared_cache(settings)  # before connecting: a refusal needs no cluster
    ray.init(address=settings.cluster, logging_level=settings.log_level.upper())
    try:
        try:
            start(settings)
        except RuntimeError:  # a replica failed to start: nothing is left half-deployed
            serve.delete(APP)
            raise
        print(f"chatd on Ray Serve at http://{settings.host}:{settings.port}", file=sys.stderr)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        serve.delete(APP)
    finally:
        ray.shutdown()


def config_file(settings: Settings) -> str:
    """A Serve config file (YAML) deploying these settings with `serve deploy`."""
    check_shared_cache(settings)
    args = settings.model_dump(mode="json", exclude_defaults=True, exclude=UNSHARED)
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": settings.host, "port": settings.port},
        "applications": [
            {"name": APP, "route_prefix": "/", "import_path": f"{__name__}:build", "args": args}
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def build(args: dict[str, Any]) -> Application:
    """The application builder a config file names: its args are settings."""
    return application(load_settings(args))
