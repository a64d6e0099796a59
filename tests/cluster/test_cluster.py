"""chatd on a three-node loopback Ray cluster (conftest.py), through its HTTP API. The tests
run in this file's order on one deployment: the last ones kill a replica and redeploy."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading

import httpx
import psutil
import pytest

from tests.cluster.conftest import AFFINITY_MODELS, LOADING_MODEL, LOOPBACK, MAX_QUEUE
from tests.conftest import NO_END, Server, wait_until

NO_CACHE = {"x-use-cache": "false"}
HELLO = [{"role": "user", "content": "Say hello."}]
REPLICA = "x-chatd-replica"


def post(url: str, headers: dict | None = None, **body) -> httpx.Response:
    body.setdefault("messages", HELLO)
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def events(lines) -> list[dict | str]:
    """A stream's `data:` payloads: parsed JSON, or the text ([DONE])."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.fixture(scope="module")
def single(ray_cluster):
    """One chatd process with the replicas' settings: the reference answers."""
    s = ray_cluster.settings
    with Server(
        "--threads", "1", "--parallel", str(s.parallel), "--ctx", str(s.ctx),
        "--cache-url", "off",
    ) as srv:  # fmt: skip
        srv.wait_ready()
        yield srv.url


def test_every_listener_is_on_loopback(ray_cluster):
    nodes = [ray_cluster.cluster.head_node, *ray_cluster.cluster.worker_nodes]
    roots = [p.process.pid for n in nodes for ps in n.all_processes.values() for p in ps]
    procs = {proc.pid: proc for pid in roots for proc in _tree(pid)}
    listening = [
        (proc.name(), c.laddr)
        for proc in procs.values()
        for c in _sockets(proc)
        if c.status == psutil.CONN_LISTEN
    ]
    print(sorted((name, addr.ip, addr.port) for name, addr in listening))
    assert len(listening) > 5, listening  # GCS, raylets, object managers, workers, Serve
    assert {addr.port for _, addr in listening} >= {ray_cluster.settings.port}
    assert all(_loopback(addr.ip) for _, addr in listening), listening


def _loopback(ip: str) -> bool:
    """127.0.0.1, also as an IPv6 socket's mapped address (::ffff:127.0.0.1): never `*`."""
    address = ipaddress.ip_address(ip)
    return str(getattr(address, "ipv4_mapped", None) or address) == LOOPBACK


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _sockets(proc: psutil.Process):
    try:
        return proc.net_connections(kind="inet")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def test_both_clients_get_the_single_process_text(ray_cluster, single):
    from huggingface_hub import InferenceClient
    from openai import OpenAI

    def texts(url: str) -> list[str]:
        openai = OpenAI(base_url=f"{url}/v1", api_key="sk-test", default_headers=NO_CACHE)
        hf = InferenceClient(base_url=f"{url}/v1/", api_key="hf_test", headers=NO_CACHE)
        asked = {"messages": HELLO, "max_tokens": 24, "temperature": 0}
        o = openai.chat.completions.create(model="tgi", **asked).choices[0].message.content
        o_stream = "".join(
            c.choices[0].delta.content or ""
            for c in openai.chat.completions.create(model="tgi", stream=True, **asked)
            if c.choices
        )
        h = hf.chat_completion(**asked).choices[0].message.content
        h_stream = "".join(
            c.choices[0].delta.content or ""
            for c in hf.chat_completion(stream=True, **asked)
            if c.choices
        )
        return [o, o_stream, h, h_stream]

    expected = texts(single)
    assert expected[0] and len(set(expected)) == 1, expected
    assert texts(ray_cluster.url) == expected


def test_errors_keep_status_body_and_headers(ray_cluster):
    url = ray_cluster.url
    missing = post(url, model="nobody/nothing-here")  # the ingress's catalogue
    assert missing.status_code == 404 and missing.json()["error_type"] == "not_found"

    too_long = post(url, messages=[{"role": "user", "content": "word " * 2000}])
    assert too_long.status_code == 400 and too_long.json()["error_type"] == "validation"
    assert too_long.headers[REPLICA] and "error" in too_long.json()

    for stream in (False, True):
        full = post(url, NO_CACHE, n=MAX_QUEUE + 2, stream=stream, max_tokens=2)
        assert full.status_code == 429, full.text
        assert full.json()["error_type"] == "overloaded"
        assert full.headers["retry-after"] == "1" and full.headers[REPLICA]

    for stream in (False, True):
        loading = post(url, NO_CACHE, model=LOADING_MODEL, stream=stream, max_tokens=2)
        if loading.status_code == 200:  # the first request's load was already done
            continue
        assert loading.status_code == 503, loading.text
        body = loading.json()
        assert body["error_type"] == "loading" and body["estimated_time"] > 0
        assert loading.headers["x-should-retry"] == "false"


def _system(name: str, topic: str) -> str:
    rules = " ".join(f"Rule {i}: answers about {topic} stay short and plain." for i in range(30))
    return f"{name} is your name. {rules}"


def test_a_conversation_stays_on_the_replica_that_cached_it(ray_cluster):
    systems = {"A": _system("Ada", "rivers"), "B": _system("Bo", "mountains")}
    replicas: dict[str, set[str]] = {"A": set(), "B": set()}
    prompt = cached = 0
    for turn in range(10):
        for group, system in systems.items():
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": f"Question {turn}: name one."},
            ]
            r = post(ray_cluster.url, NO_CACHE, messages=messages, max_tokens=2, temperature=0)
            assert r.status_code == 200, r.text
            replicas[group].add(r.headers[REPLICA])
            usage = r.json()["usage"]
            prompt += usage["prompt_tokens"]
            cached += usage["prompt_tokens_details"]["cached_tokens"]
    assert all(len(seen) == 1 for seen in replicas.values()), replicas
    assert cached / prompt >= 0.8, (cached, prompt)


def test_each_model_is_loaded_once_on_one_replica(ray_cluster):
    served: dict[str, set[str]] = {m: set() for m in AFFINITY_MODELS}
    wait = {**NO_CACHE, "x-wait-for-model": "true"}
    for _ in range(4):
        for model in AFFINITY_MODELS:
            r = post(ray_cluster.url, wait, model=model, max_tokens=2)
            assert r.status_code == 200, r.text
            served[model].add(r.headers[REPLICA])
    assert all(len(replicas) == 1 for replicas in served.values()), served
    stats = ray_cluster.stats()
    assert len(stats) == 2
    for model in AFFINITY_MODELS:
        assert sum(s["loads"].get(model, 0) for s in stats) == 1, stats


def test_a_disconnect_frees_the_replica_and_a_hit_needs_none(ray_cluster):
    body = {"messages": HELLO, "max_tokens": 600, "logit_bias": NO_END, "stream": True}
    with httpx.stream(
        "POST", f"{ray_cluster.url}/v1/chat/completions", json=body, headers=NO_CACHE
    ) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert sum(s["running"] for s in ray_cluster.stats()) == 1
    wait_until(
        lambda: sum(s["running"] for s in ray_cluster.stats()) == 0, 30, "the sequence's end"
    )

    asked = {"messages": HELLO, "max_tokens": 8, "temperature": 0, "seed": 7}
    first, again = post(ray_cluster.url, **asked), post(ray_cluster.url, **asked)
    assert first.headers["x-cache"] == "miss" and first.headers[REPLICA]
    assert again.headers["x-cache"] == "hit" and REPLICA not in again.headers
    assert again.json()["choices"] == first.json()["choices"]


def test_more_streams_than_serves_default_limit_run_at_once(ray_cluster):
    """Serve sends a deployment's replica 5 requests at most by default: the ingress must
    pass on every stream the replicas can take (here 2 x (2 slots + 4 waiting))."""
    body = {"max_tokens": 600, "logit_bias": NO_END, "stream": True}
    n = 8

    def ongoing() -> int:
        return sum(s["running"] + s["waiting"] for s in ray_cluster.stats())

    async def hold(client: httpx.AsyncClient, i: int) -> None:
        messages = [{"role": "user", "content": f"Count to {i + 10}."}]
        async with client.stream(
            "POST", "/v1/chat/completions", json={**body, "messages": messages}, headers=NO_CACHE
        ):
            await asyncio.Event().wait()  # open until cancelled

    async def streams() -> None:
        async with httpx.AsyncClient(base_url=ray_cluster.url, timeout=120) as client:
            held = [asyncio.create_task(hold(client, i)) for i in range(n)]
            try:
                await asyncio.to_thread(
                    wait_until, lambda: ongoing() == n, 60, f"{n} streams on the replicas"
                )
            finally:
                for task in held:
                    task.cancel()
                await asyncio.gather(*held, return_exceptions=True)

    asyncio.run(streams())
    wait_until(lambda: ongoing() == 0, 60, "the streams' end")


def test_a_non_stream_request_whose_replica_is_lost_is_answered_by_another(ray_cluster):
    answer: list[httpx.Response] = []
    body = {"max_tokens": 300, "logit_bias": NO_END}
    asking = threading.Thread(target=lambda: answer.append(post(ray_cluster.url, NO_CACHE, **body)))
    asking.start()

    def busy() -> list[str]:
        return [s["replica"] for s in ray_cluster.stats() if s["running"]]

    wait_until(busy, 60, "the request to start on a replica")
    (lost,) = busy()
    ray_cluster.ray.kill(ray_cluster.replica(lost), no_restart=True)
    asking.join()
    (r,) = answer
    assert r.status_code == 200, r.text
    assert r.headers[REPLICA] != lost and r.json()["usage"]["completion_tokens"] == 300
    wait_until(lambda: ray_cluster.replica_states() == {"RUNNING": 2}, 120, "a replacement")


def test_a_replica_lost_mid_stream_ends_it_with_replica_lost(ray_cluster):
    body = {"messages": HELLO, "max_tokens": 600, "logit_bias": NO_END, "stream": True}
    with httpx.stream(
        "POST", f"{ray_cluster.url}/v1/chat/completions", json=body, headers=NO_CACHE
    ) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: {"))
        ray_cluster.ray.kill(ray_cluster.replica(r.headers[REPLICA]), no_restart=True)
        rest = events(lines)
    assert rest and rest[-1]["error_type"] == "replica_lost", rest[-3:]
    assert "[DONE]" not in rest

    for _ in range(3):
        assert post(ray_cluster.url, NO_CACHE, max_tokens=2).status_code == 200
    wait_until(lambda: ray_cluster.replica_states() == {"RUNNING": 2}, 120, "a replacement")


def test_autoscaling_adds_a_replica_under_load_and_removes_it_after(ray_cluster):
    from tests.cluster.conftest import cluster_settings

    settings = cluster_settings(min_replicas=1, max_replicas=2, port=ray_cluster.settings.port)
    quick = {"initial_replicas": 1, "upscale_delay_s": 0, "downscale_delay_s": 2,
             "look_back_period_s": 1}  # fmt: skip
    ray_cluster.deploy(settings, quick)
    url = ray_cluster.url
    one, two = {"RUNNING": 1}, {"RUNNING": 2}
    wait_until(lambda: ray_cluster.replica_states() == one, 120, "one replica")

    body = {"messages": HELLO, "max_tokens": 200, "logit_bias": NO_END}
    statuses: list[int] = []
    scaled = threading.Event()

    def client() -> None:  # keeps its request going until the second replica is up
        while not scaled.is_set():
            statuses.append(post(url, NO_CACHE, **body).status_code)

    load = [threading.Thread(target=client) for _ in range(2 * settings.parallel)]
    for t in load:  # twice what one replica is asked to hold
        t.start()
    try:
        wait_until(lambda: ray_cluster.replica_states() == two, 120, "a second replica")
    finally:
        scaled.set()
        for t in load:
            t.join()
    assert statuses and statuses == [200] * len(statuses)
    wait_until(lambda: ray_cluster.replica_states() == one, 120, "back to one replica")


def test_a_redeploy_leaves_the_router_only_live_replicas(ray_cluster):
    """The prefix router's tree (a detached actor) outlives the ingress: after a redeploy it
    named the old replicas, and a request sent to one of those waited forever."""
    from tests.cluster.conftest import cluster_settings

    ray = ray_cluster.ray
    assert post(ray_cluster.url, NO_CACHE, max_tokens=2).status_code == 200  # a router, a tree
    tree = ray.get_actor("LlmPrefixTreeActor", namespace="serve::chatd::ChatdReplica")
    before = set(ray.get(tree.getattr.remote("tenant_to_char_count")))
    assert before  # the earlier tests' replicas
    ray_cluster.deploy(cluster_settings(port=ray_cluster.settings.port))
    wait_until(lambda: ray_cluster.replica_states() == {"RUNNING": 2}, 120, "two new replicas")
    for i in range(6):  # prefixes that match nothing: the least-filled replica's
        messages = [{"role": "user", "content": f"{i} " * (i + 1) + "Say a word."}]
        r = httpx.post(f"{ray_cluster.url}/v1/chat/completions", headers=NO_CACHE,
                       json={"messages": messages, "max_tokens": 2}, timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
    live = set(ray_cluster.replica_names())  # tenants are named as the replica actors
    tenants = set(ray.get(tree.getattr.remote("tenant_to_char_count")))
    assert tenants == live and not tenants & before, (tenants, live, before)
