"""Metrics and MetricsMiddleware, on a tiny FastAPI app (no model needed)."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from chatd.engine.prefix_store import PrefixStats
from chatd.models.registry import ModelState
from chatd.server.auth import ApiKeyMiddleware
from chatd.server.metrics import Metrics, MetricsMiddleware


def make_app(metrics: Metrics, keys: list[str] | None = None) -> FastAPI:
    app = FastAPI(redirect_slashes=False)

    @app.get("/items/{item_id}")
    async def item(item_id: int):
        return {"id": item_id}

    @app.get("/stream")
    async def stream():
        async def chunks():
            for i in range(3):
                yield f"chunk{i};"

        return StreamingResponse(chunks(), media_type="text/plain", status_code=206)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("boom")

    router = APIRouter()

    @router.post("/models/{org}/{name}/v1/chat/completions")
    async def chat(org: str, name: str):
        return {"model": f"{org}/{name}"}

    app.include_router(router, prefix="/api")
    if keys:
        app.add_middleware(ApiKeyMiddleware, keys=keys)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # last added = outermost
    return app


def samples(metrics: Metrics) -> dict[tuple[str, frozenset], float]:
    """Every sample of the exposition, keyed by (sample name, labels)."""
    text = metrics.render()[0].decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def requests(metrics: Metrics, route: str, status: str) -> float | None:
    return value(metrics, "chatd_requests_total", route=route, status=status)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def test_requests_are_counted_by_route_template_and_status(metrics):
    c = TestClient(make_app(metrics))
    assert c.get("/items/1").status_code == 200
    assert c.get("/items/2").status_code == 200
    assert c.get("/items/notanint").status_code == 422
    text = metrics.render()[0].decode()
    assert 'chatd_requests_total{route="/items/{item_id}",status="200"} 2.0' in text
    assert 'chatd_requests_total{route="/items/{item_id}",status="422"} 1.0' in text
    assert "/items/1" not in text


def test_unknown_path_is_counted_as_unmatched(metrics):
    c = TestClient(make_app(metrics))
    assert c.get("/no/such/path").status_code == 404
    assert c.get("/another/one").status_code == 404
    assert requests(metrics, "unmatched", "404") == 2


def test_wrong_method_is_counted_under_the_route(metrics):
    c = TestClient(make_app(metrics))
    assert c.post("/items/1").status_code == 405
    assert requests(metrics, "/items/{item_id}", "405") == 1


def test_streaming_response_is_counted_with_its_status(metrics):
    c = TestClient(make_app(metrics))
    r = c.get("/stream")
    assert r.text == "chunk0;chunk1;chunk2;"
    assert requests(metrics, "/stream", "206") == 1


def test_included_router_prefix_is_part_of_the_template(metrics):
    c = TestClient(make_app(metrics))
    assert c.post("/api/models/org/name/v1/chat/completions").json() == {"model": "org/name"}
    route = "/api/models/{org}/{name}/v1/chat/completions"
    assert requests(metrics, route, "200") == 1


def test_unhandled_error_is_counted_as_500(metrics):
    c = TestClient(make_app(metrics), raise_server_exceptions=False)
    assert c.get("/boom").status_code == 500
    assert requests(metrics, "/boom", "500") == 1


def test_401_from_auth_is_counted_under_the_route(metrics):
    c = TestClient(make_app(metrics, keys=["key"]))
    assert c.get("/items/1").status_code == 401
    assert c.get("/items/1", headers={"authorization": "Bearer key"}).status_code == 200
    assert requests(metrics, "/items/{item_id}", "401") == 1
    assert requests(metrics, "/items/{item_id}", "200") == 1


def test_render_returns_body_and_content_type(metrics):
    body, content_type = metrics.render()
    assert isinstance(body, bytes) and b"chatd_requests_total" in body
    assert content_type.startswith("text/plain")


def test_observe_request(metrics):
    metrics.observe_request("/v1/chat/completions", 200)
    metrics.observe_request("/v1/chat/completions", "200")
    metrics.observe_request("/v1/chat/completions", 503)
    assert requests(metrics, "/v1/chat/completions", "200") == 2
    assert requests(metrics, "/v1/chat/completions", "503") == 1


def test_set_sequences(metrics):
    metrics.set_sequences("m", running=3, waiting=5)
    assert value(metrics, "chatd_running_sequences", model="m") == 3
    assert value(metrics, "chatd_queue_depth", model="m") == 5
    metrics.set_sequences("m", running=1, waiting=0)
    assert value(metrics, "chatd_running_sequences", model="m") == 1
    assert value(metrics, "chatd_queue_depth", model="m") == 0


def test_observe_ttft_fills_the_right_buckets(metrics):
    metrics.observe_ttft("m", 0.2)
    metrics.observe_ttft("m", 3.0)
    name = "chatd_time_to_first_token_seconds"
    assert value(metrics, f"{name}_count", model="m") == 2
    assert value(metrics, f"{name}_sum", model="m") == pytest.approx(3.2)
    assert value(metrics, f"{name}_bucket", model="m", le="0.01") == 0
    assert value(metrics, f"{name}_bucket", model="m", le="0.25") == 1
    assert value(metrics, f"{name}_bucket", model="m", le="5.0") == 2
    assert value(metrics, f"{name}_bucket", model="m", le="60.0") == 2


def test_observe_itl_fills_the_right_buckets(metrics):
    metrics.observe_itl("m", 0.002)
    metrics.observe_itl("m", 0.04)
    metrics.observe_itl("m", 0.04)
    name = "chatd_inter_token_latency_seconds"
    assert value(metrics, f"{name}_count", model="m") == 3
    assert value(metrics, f"{name}_bucket", model="m", le="0.001") == 0
    assert value(metrics, f"{name}_bucket", model="m", le="0.0025") == 1
    assert value(metrics, f"{name}_bucket", model="m", le="0.05") == 3
    assert value(metrics, f"{name}_bucket", model="m", le="5.0") == 3


def test_add_tokens(metrics):
    metrics.add_tokens("m", prompt=10, generated=4)
    metrics.add_tokens("m", prompt=5, generated=0)
    metrics.add_tokens("other", prompt=1, generated=1)
    assert value(metrics, "chatd_prompt_tokens_total", model="m") == 15
    assert value(metrics, "chatd_generated_tokens_total", model="m") == 4
    assert value(metrics, "chatd_prompt_tokens_total", model="other") == 1


def test_prefix_stores_show_what_each_engine_reported_last(metrics):
    metrics.set_prefix_stores(
        {"m": PrefixStats(bytes=4096, entries=2, restores=3, restored_tokens=90)}
    )
    assert value(metrics, "chatd_prefix_store_bytes", model="m") == 4096
    assert value(metrics, "chatd_prefix_store_entries", model="m") == 2
    assert value(metrics, "chatd_prefix_store_restores_total", model="m") == 3
    assert value(metrics, "chatd_prefix_store_restored_tokens_total", model="m") == 90
    metrics.set_prefix_stores({})  # the model was unloaded
    assert value(metrics, "chatd_prefix_store_bytes", model="m") is None


def test_cache_hits_and_misses(metrics):
    metrics.cache_hit()
    metrics.cache_hit()
    metrics.cache_miss()
    assert value(metrics, "chatd_cache_hits_total") == 2
    assert value(metrics, "chatd_cache_misses_total") == 1


def test_observe_load(metrics):
    metrics.observe_load("m", 12.5)
    assert value(metrics, "chatd_model_load_seconds_count", model="m") == 1
    assert value(metrics, "chatd_model_load_seconds_sum", model="m") == 12.5
    assert value(metrics, "chatd_model_load_seconds_bucket", model="m", le="10.0") == 0
    assert value(metrics, "chatd_model_load_seconds_bucket", model="m", le="30.0") == 1


def test_model_state_is_exclusive(metrics):
    def states(model: str) -> dict[str, float | None]:
        return {
            s: value(metrics, "chatd_model_state", model=model, state=s)
            for s in ("available", "loading", "ready", "failed")
        }

    metrics.set_model_state("m", "loading")
    assert states("m") == {"available": 0, "loading": 1, "ready": 0, "failed": 0}
    metrics.set_model_state("m", ModelState.READY)
    assert states("m") == {"available": 0, "loading": 0, "ready": 1, "failed": 0}
    metrics.set_model_state("other", "failed")
    assert states("other") == {"available": 0, "loading": 0, "ready": 0, "failed": 1}
    assert states("m")["ready"] == 1


def test_unknown_model_state_is_refused(metrics):
    with pytest.raises(ValueError, match="unknown model state"):
        metrics.set_model_state("m", "sleeping")


def test_two_metrics_objects_do_not_collide():
    a, b = Metrics(), Metrics()
    a.cache_hit()
    assert value(a, "chatd_cache_hits_total") == 1
    assert value(b, "chatd_cache_hits_total") == 0
