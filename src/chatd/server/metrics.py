"""Prometheus metrics: one Metrics object per app, each with its own registry, so several apps in
one process (the tests) never collide on metric names.

The app serves them with `GET /metrics` (server/app.py); MetricsMiddleware counts every
HTTP request by route template and status.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatd.engine.prefix_store import PrefixStats
from chatd.server.auth import route_path

MODEL_STATES = ("downloading", "available", "loading", "ready", "failed")
UNMATCHED = "unmatched"

# CPU inference: a first token takes from tens of milliseconds (short prompt, cached) to a
# minute (long prompt, busy server); one more token from about a millisecond to seconds.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """Every chatd metric, registered in a registry of its own.

    Thread-safe: the engine may call these from its worker threads.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True):
        """process=True adds the usual process_* metrics (CPU, memory, open files)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "chatd_requests", "HTTP requests by route template and status", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "chatd_queue_depth", "Sequences waiting for a slot", ["model"], registry=r
        )
        self.running = Gauge(
            "chatd_running_sequences", "Sequences being decoded", ["model"], registry=r
        )
        self.ttft = Histogram(
            "chatd_time_to_first_token_seconds", "Time from request to first generated token",
            ["model"], buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            "chatd_inter_token_latency_seconds", "Time between two generated tokens",
            ["model"], buckets=ITL_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "chatd_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.generated_tokens = Counter(
            "chatd_generated_tokens", "Tokens generated", ["model"], registry=r
        )
        self.batch = Histogram(
            "chatd_batch_sequences", "Sequences sampled together in one engine step",
            ["model"], buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.drafted_tokens = Counter(
            "chatd_draft_tokens", "Speculative draft tokens verified", ["model"], registry=r
        )
        self.accepted_tokens = Counter(
            "chatd_draft_accepted_tokens", "Speculative draft tokens accepted", ["model"],
            registry=r,
        )  # fmt: skip
        self.cache_hits = Counter("chatd_cache_hits", "Response cache hits", registry=r)
        self.cache_misses = Counter("chatd_cache_misses", "Response cache misses", registry=r)
        self.model_load = Histogram(
            "chatd_model_load_seconds", "Time to load a model", ["model"],
            buckets=LOAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_state = Gauge(
            "chatd_model_state", "1 for the model's current state, 0 for the others",
            ["model", "state"], registry=r,
        )  # fmt: skip
        self._prefix_stores = _PrefixStores()
        r.register(self._prefix_stores)
        if process:
            ProcessCollector(registry=r)
        # The four state gauges of a model change together; a lock keeps two transitions from
        # interleaving into two states at 1.
        self._state_lock = threading.Lock()

    def observe_request(self, route: str, status: int | str) -> None:
        """Count one finished HTTP request (route is a template, never a raw path)."""
        self.requests.labels(route=route, status=str(status)).inc()

    def set_sequences(self, model: str, running: int, waiting: int) -> None:
        """Set the scheduler's current counts for a model."""
        self.running.labels(model=model).set(running)
        self.queue_depth.labels(model=model).set(waiting)

    def observe_ttft(self, model: str, seconds: float) -> None:
        self.ttft.labels(model=model).observe(seconds)

    def observe_itl(self, model: str, seconds: float) -> None:
        self.itl.labels(model=model).observe(seconds)

    def observe_batch(self, model: str, sequences: int) -> None:
        self.batch.labels(model=model).observe(sequences)

    def add_tokens(self, model: str, prompt: int, generated: int) -> None:
        """Add one request's (or one step's) prompt and generated token counts."""
        self.prompt_tokens.labels(model=model).inc(prompt)
        self.generated_tokens.labels(model=model).inc(generated)

    def set_prefix_stores(self, stats: dict[str, PrefixStats]) -> None:
        """Every loaded model's prefix store, as its engine reports it now (at scrape time)."""
        self._prefix_stores.stats = stats

    def add_drafts(self, model: str, drafted: int, accepted: int) -> None:
        """Add one step's speculative draft tokens and those of them accepted."""
        self.drafted_tokens.labels(model=model).inc(drafted)
        self.accepted_tokens.labels(model=model).inc(accepted)

    def cache_hit(self) -> None:
        self.cache_hits.inc()

    def cache_miss(self) -> None:
        self.cache_misses.inc()

    def observe_load(self, model: str, seconds: float) -> None:
        self.model_load.labels(model=model).observe(seconds)

    def set_model_state(self, model: str, state: Any) -> None:
        """Set `state` (a string or chatd's ModelState) to 1 and the model's other states to 0."""
        state = str(getattr(state, "value", state))
        if state not in MODEL_STATES:
            raise ValueError(f"unknown model state {state!r}; expected one of {MODEL_STATES}")
        with self._state_lock:
            for s in MODEL_STATES:
                self.model_state.labels(model=model, state=s).set(1 if s == state else 0)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for the /metrics response."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _PrefixStores(Collector):
    """The prefix stores' figures: the engines count them, the scrape reads them."""

    def __init__(self) -> None:
        self.stats: dict[str, PrefixStats] = {}

    def collect(self):
        families = {
            "bytes": GaugeMetricFamily(
                "chatd_prefix_store_bytes", "Host memory held by the prefix store", labels=["model"]
            ),
            "entries": GaugeMetricFamily(
                "chatd_prefix_store_entries", "KV prefixes in the prefix store", labels=["model"]
            ),
            "restores": CounterMetricFamily(
                "chatd_prefix_store_restores",
                "Prompts that got a stored prefix restored into their slot", labels=["model"],
            ),
            "restored_tokens": CounterMetricFamily(
                "chatd_prefix_store_restored_tokens",
                "Prompt tokens restored from the prefix store instead of prefilled",
                labels=["model"],
            ),
        }  # fmt: skip
        for model, stats in self.stats.items():
            for name, family in families.items():
                family.add_metric([model], getattr(stats, name))
        return list(families.values())


class MetricsMiddleware:
    """Pure ASGI middleware that counts every HTTP request in `chatd_requests_total` by route
    template (e.g. `/models/{org}/{name}/v1/chat/completions`, so labels stay few whatever the
    paths) and status: the status of `http.response.start`, counted when the response starts
    (so a long stream shows up at once), or 500 when the app raised before answering.

    Place it outermost, so that it also counts the 401s of ApiKeyMiddleware and the 500s.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics
        self._templates = _Templates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Taken now: routing rewrites root_path for mounted apps.
        path, method = route_path(scope), scope["method"]
        counted = False

        async def counting_send(message: Message) -> None:
            nonlocal counted
            if message["type"] == "http.response.start" and not counted:
                counted = True
                route = self._templates.find(scope.get("app"), path, method)
                self.metrics.observe_request(route, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except BaseException:
            if not counted:
                # Starlette's ServerErrorMiddleware, outside us, turns this into a 500.
                counted = True
                route = self._templates.find(scope.get("app"), path, method)
                self.metrics.observe_request(route, 500)
            raise


class _Templates:
    """Finds the path template of the route a request went to.

    Matched here rather than read from scope["route"]: that is missing for requests refused
    before routing (401), for mounts, and under FastAPI's include_router(prefix=...) it is the
    inner route without the prefix. The table is flattened from the app's routes once, and
    rebuilt if their number changes.
    """

    def __init__(self) -> None:
        self._key: tuple[int, int] | None = None
        self._table: list[tuple[re.Pattern[str], str, frozenset[str] | None]] = []

    def find(self, app: Any, path: str, method: str) -> str:
        routes = getattr(app, "routes", None)
        if routes is None:
            return UNMATCHED
        key = (id(app), len(routes))
        if key != self._key:
            self._table, self._key = _flatten(routes), key
        fallback = None
        for regex, template, methods in self._table:
            if regex.match(path):
                if methods is None or method in methods:
                    return template
                # Like the router: a path match with the wrong method (a 405) counts only if
                # no later route takes the method too.
                fallback = fallback or template
        return fallback or UNMATCHED


def _flatten(routes: Any) -> list[tuple[re.Pattern[str], str, frozenset[str] | None]]:
    try:
        # Recent FastAPI keeps included routers nested in app.routes; this yields their routes
        # with the include prefixes applied. Starlette and older FastAPI list them flat.
        from fastapi.routing import iter_route_contexts

        candidates = list(iter_route_contexts(routes))
    except ImportError:
        candidates = list(routes)
    table = []
    for route in candidates:
        regex = getattr(route, "path_regex", None)
        template = getattr(route, "path_format", None)
        if regex is None or template is None:
            continue
        methods = getattr(route, "methods", None)
        table.append((regex, template, frozenset(methods) if methods else None))
    return table
