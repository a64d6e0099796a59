"""The cluster's parts that need no cluster: the stream batching, the Serve config file, the
settings a cluster refuses, the routing text of a call, the ingress's view of the replicas."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from typer.testing import CliRunner

from chatd import cli
from chatd.config import SettingsError, load_settings
from chatd.models.errors import ModelLoading
from chatd.models.registry import ModelState
from chatd.models.sources import SMOLLM2_ID, discover
from chatd.protocol.request import ChatRequest
from tests.conftest import wait_until

pytest.importorskip("ray", reason="the chatd[cluster] extra is not installed")
from chatd.cluster import deploy, ingress  # noqa: E402
from chatd.cluster.replica import Call, batched  # noqa: E402


async def _collect(events, interval):
    return [text async for text in batched(events, interval)]


def test_batches_send_the_first_event_at_once_then_what_came_meanwhile():
    async def source():
        yield "a"
        await asyncio.sleep(0.05)
        for text in "bcd":
            yield text
        await asyncio.sleep(0.05)
        yield "e"

    assert asyncio.run(_collect(source(), 0.03)) == ["a", "bcd", "e"]


def test_a_failing_source_fails_the_batches_after_what_it_sent():
    async def source():
        yield "a"
        await asyncio.sleep(0.01)
        raise RuntimeError("engine gone")

    async def run():
        got = []
        with pytest.raises(RuntimeError, match="engine gone"):
            async for text in batched(source(), 0.001):
                got.append(text)
        return got

    assert asyncio.run(run()) == ["a"]


def test_closing_the_batches_closes_the_source():
    closed = asyncio.Event()

    async def source():
        try:
            while True:
                yield "x"
                await asyncio.sleep(0.001)
        finally:
            closed.set()

    async def run():
        events = batched(source(), 0.001)
        assert await anext(events) == "x"
        await events.aclose()
        return closed.is_set()

    assert asyncio.run(run())


def test_the_routing_text_is_each_message_text():
    body = ChatRequest.model_validate(
        {"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                         {"type": "text", "text": " there"}]},
        ]}
    )  # fmt: skip
    assert Call("m", body, False).messages == ["Be brief.", "Hi there"]


def test_the_config_file_deploys_the_settings_given():
    settings = load_settings({"replicas": 3, "threads": 2, "api_keys": ["secret"]})
    config = yaml.safe_load(deploy.config_file(settings))
    (app,) = config["applications"]
    assert app["import_path"] == "chatd.cluster.deploy:build"
    assert app["args"] == {"threads": 2, "replicas": 3}  # no key, no defaults
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8000}
    built = deploy.build(app["args"])
    assert type(built).__name__ == "Application"


def test_replica_options_follow_the_settings():
    scaled = load_settings({"min_replicas": 1, "max_replicas": 4, "parallel": 3, "threads": 2})
    options = deploy._replica_options(scaled, {"upscale_delay_s": 1})
    assert options["autoscaling_config"] == {
        "min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 3, "upscale_delay_s": 1,
    }  # fmt: skip
    assert "num_replicas" not in options
    assert options["ray_actor_options"] == {"num_cpus": 2}
    fixed = deploy._replica_options(
        load_settings({"replicas": 2, "replica_cpus": 0.5, "prefix_routing": False}), None
    )
    assert fixed["num_replicas"] == 2 and fixed["ray_actor_options"] == {"num_cpus": 0.5}
    assert "request_router_config" not in fixed


@pytest.mark.parametrize("cache_url", ["memory", None])
def test_several_ingresses_need_a_shared_cache(cache_url):
    with pytest.raises(SettingsError, match="redis://"):
        deploy.check_shared_cache(load_settings({"ingress_replicas": 2, "cache_url": cache_url}))
    for shared in ("redis://127.0.0.1:6379/0", "off"):
        deploy.check_shared_cache(load_settings({"ingress_replicas": 2, "cache_url": shared}))


def test_the_cli_refuses_what_a_cluster_cannot_do():
    runner = CliRunner()
    refused = runner.invoke(cli.app, ["cluster", "config", "--ingress-replicas", "2"])
    assert refused.exit_code == 2 and "redis://" in refused.output
    half = runner.invoke(cli.app, ["serve", "--min-replicas", "2", "--print-settings"])
    assert half.exit_code == 2 and "--max-replicas" in half.output


def test_the_ingress_default_is_ready_only_while_a_replica_runs(monkeypatch):
    """What /health reports through a cluster: 503 loading while Serve says no replica runs
    (killing both replicas in a test races their replacements, which start in ~2 s)."""
    monkeypatch.setattr(ingress, "WATCH_S", 0.01)
    running = [0]
    settings = load_settings({"models": [SMOLLM2_ID], "pull": "never"})
    found = discover(settings.models, settings.models_dir, settings.cache_dir)
    catalogue = ingress.Catalogue(settings, found, lambda: running[0])
    default = catalogue.default
    catalogue.start_loading(default)
    try:
        assert default.state is ModelState.LOADING  # before the first answer from Serve
        running[0] = 2
        wait_until(lambda: default.state is ModelState.READY, 5, "ready with replicas up")
        running[0] = 0
        wait_until(lambda: default.state is ModelState.LOADING, 5, "loading with none")
        why = default.not_ready(1.0)  # what /health raises: a 503 loading
        assert isinstance(why, ModelLoading) and why.estimated_time > 0
    finally:
        catalogue.close()
