"""Soak: many clients of every kind against one chatd for a bounded time, and verdicts.

    python -m benchmarks.soak            # the long mode (5 minutes)
    python -m benchmarks.soak --short    # about a minute (tests/test_soak.py runs it)

It starts its own chatd (`--parallel 16 --max-queue 32`, SmolLM2-135M named, no response
cache) so that it can read the server's memory, and keeps 64 clients busy: streams and JSON
requests, some with a JSON schema (response_format) or tools, some leaving after two chunks,
and some seeded requests whose text was first taken alone: a logit bias pins each one's tokens
(llama.cpp's numbers for a token depend on the batch it is computed in, which can change
greedy and seeded text: README), so any difference is cross-talk. A client refused with 429 waits
its Retry-After and tries again. The verdicts are counts: no 5xx, no stream lost (a 200 that
ends without [DONE]), no seeded answer differing from its solo run (cross-talk), 429s only
with Retry-After, no sequence left running afterwards, and the server's RSS at the end
(less what its prefix store holds, a bounded cache) within 10 % of its RSS once warm (after
the first minute, or a third of a short run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.load import prompt_for
from benchmarks.vs_llama_server import free_port, wait_healthy
from chatd.models.sources import SMOLLM2_ID

CLIENTS = 64
SERVER_ARGS = [
    "--model", SMOLLM2_ID,  # named: `chatd serve` alone serves Qwen
    "--parallel", "16", "--max-queue", "32", "--ctx", "1024", "--cache-url", "off",
]  # fmt: skip
MAX_TOKENS = 16
SEEDED = [  # (prompt, seed, token): their solo texts are what the load must reproduce
    ("Write a short story about a cat.", 11, 28),
    ("Describe the sea.", 12, 29),
    ("Why is the sky blue?", 13, 30),
    ("Give me three tips for sleeping well.", 14, 31),
]
SEEDED_SAMPLING = {"temperature": 0.8, "max_tokens": 16}
PERSON = {
    "type": "json_schema",
    "json_schema": {
        "name": "person",
        "schema": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 20},
                "age": {"type": "integer"},
            },
            "required": ["name", "age"],
            "additionalProperties": False,
        },
    },
}
WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
            },
        },
    }
]
KINDS = ["stream", "json", "schema", "tools", "leaves", "seeded"]
RSS_MARGIN = 0.10


@dataclass
class Tally:
    kinds: Counter = field(default_factory=Counter)  # finished requests by kind
    statuses: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # what went wrong, by verdict
    examples: dict[str, str] = field(default_factory=dict)  # the first of each failure
    seeded_compared: int = 0

    def fail(self, verdict: str, detail: str) -> None:
        self.failures[verdict] += 1
        self.examples.setdefault(verdict, detail[:300])


def body_for(kind: str, i: int) -> tuple[dict[str, Any], str | None]:
    """The i-th request of a kind, and the solo text it must equal (seeded ones)."""
    stream = kind in ("stream", "leaves") or (kind != "json" and i % 2 == 0)
    if kind == "seeded":
        prompt, seed, token = SEEDED[i % len(SEEDED)]
        body = {"messages": [{"role": "user", "content": prompt}], "seed": seed,
                "logit_bias": {str(token): 100}}  # fmt: skip
        return {**body, **SEEDED_SAMPLING, "stream": stream}, prompt
    body = {
        "messages": [{"role": "user", "content": prompt_for(i)}],
        "max_tokens": MAX_TOKENS,
        "stream": stream,
    }
    if kind == "schema":
        body["response_format"] = PERSON
    if kind == "tools":
        body["tools"] = WEATHER
        body["tool_choice"] = "required" if i % 2 else "auto"
        body["messages"] = [{"role": "user", "content": "What is the weather in Paris?"}]
    return body, None


@dataclass
class Outcome:
    status: int
    text: str | None = None  # the answer's text (tool calls as JSON), None if not read whole
    finish: str | None = None
    retry_after: float = 0.0


async def send(
    client: httpx.AsyncClient, url: str, kind: str, body: dict[str, Any], tally: Tally
) -> Outcome:
    path = f"{url}/v1/chat/completions"
    if not body["stream"]:
        r = await client.post(path, json=body)
        if r.status_code != 200:
            return _refused(r, r.text, tally)
        choice = r.json()["choices"][0]
        message = choice["message"]
        text = message.get("content") or json.dumps(message.get("tool_calls"))
        return Outcome(200, text, choice["finish_reason"])
    async with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            return _refused(r, (await r.aread()).decode(errors="replace"), tally)
        pieces, chunks, finish = [], 0, None
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                return Outcome(200, "".join(pieces), finish)
            event = json.loads(data)
            if "error" in event:
                tally.fail("stream error event", data)
                return Outcome(200)
            for choice in event.get("choices") or []:
                delta = choice.get("delta") or {}
                pieces.append(delta.get("content") or "")
                pieces.append(json.dumps(delta["tool_calls"]) if "tool_calls" in delta else "")
                finish = choice.get("finish_reason") or finish
            chunks += 1
            if kind == "leaves" and chunks == 2:
                return Outcome(200)  # the client leaves: closing the stream disconnects
        tally.fail("lost stream", f"{kind}: ended without [DONE] after {chunks} chunks")
        return Outcome(200)


def _refused(r: httpx.Response, text: str, tally: Tally) -> Outcome:
    if r.status_code >= 500:
        tally.fail("5xx", f"{r.status_code}: {text}")
    if r.status_code != 429:
        return Outcome(r.status_code)
    value = r.headers.get("retry-after")
    if value is None:
        tally.fail("429 without Retry-After", text)
    return Outcome(429, retry_after=float(value or 1))


def check_answer(kind: str, outcome: Outcome, solo: str | None, tally: Tally) -> None:
    if kind == "seeded":
        tally.seeded_compared += 1
        if outcome.text != solo:
            tally.fail("seeded text differs from its solo run", f"{outcome.text!r} != {solo!r}")
    elif kind == "schema" and outcome.finish == "stop":  # a cut one (length) is unfinished
        try:
            json.loads(outcome.text)
        except ValueError:
            tally.fail("schema answer is not JSON", outcome.text)


async def client_loop(
    client: httpx.AsyncClient, url: str, worker: int, deadline: float,
    solo: dict[str, str], tally: Tally,
) -> None:  # fmt: skip
    i = worker
    while time.monotonic() < deadline:
        kind = KINDS[i % len(KINDS)]
        body, prompt = body_for(kind, i // len(KINDS))
        try:
            outcome = await send(client, url, kind, body, tally)
        except (httpx.HTTPError, ValueError) as exc:
            tally.fail("transport error", f"{kind}: {type(exc).__name__}: {exc}")
            outcome = Outcome(-1, retry_after=1.0)
        tally.statuses[outcome.status] += 1
        if outcome.status == 200:
            tally.kinds[kind] += 1
            if outcome.text is not None:
                check_answer(kind, outcome, prompt and solo[prompt], tally)
        elif outcome.status not in (429, -1):
            tally.fail(f"unexpected {outcome.status}", f"{kind}: {body}")
        if outcome.retry_after:
            await asyncio.sleep(outcome.retry_after)  # then the same request again
        else:
            i += CLIENTS


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def metric_sum(client: httpx.AsyncClient, url: str, *names: str) -> float:
    """The sum of the /metrics samples of the named families (every model's)."""
    text = (await client.get(f"{url}/metrics")).text
    prefixes = tuple(f"{name}{{" for name in names)
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefixes)
    )


async def watch_rss(
    client: httpx.AsyncClient, url: str, pid: int, warm_at: float, samples: dict[str, int]
) -> None:
    """The RSS once warm (the first one at or past warm_at), and the last one; less the prefix
    store's bytes: a cache bounded by --prefix-cache-bytes that fills as prompts come."""
    while True:
        store = await metric_sum(client, url, "chatd_prefix_store_bytes")
        rss = rss_bytes(pid) - int(store)
        if time.monotonic() >= warm_at:
            samples.setdefault("warm", rss)
        samples["last"] = rss
        await asyncio.sleep(1.0)


async def leftover_sequences(client: httpx.AsyncClient, url: str, timeout: float = 60) -> int:
    """Sequences still running or queued once every client has finished (0 when clean); the
    ones a departed client left are aborted at the next step, so give them a moment."""
    deadline = time.monotonic() + timeout
    while True:
        left = await metric_sum(client, url, "chatd_running_sequences", "chatd_queue_depth")
        if left == 0 or time.monotonic() > deadline:
            return int(left)
        await asyncio.sleep(0.5)


async def soak(url: str, pid: int, duration: float, warm_after: float) -> dict[str, Any]:
    timeout = httpx.Timeout(connect=30.0, read=600.0, write=30.0, pool=600.0)
    limits = httpx.Limits(max_connections=CLIENTS + 4, max_keepalive_connections=CLIENTS + 4)
    tally, rss = Tally(), {}
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        solo = {}
        for k in range(len(SEEDED)):  # alone first: what each must be under the load
            body, prompt = body_for("seeded", k)
            outcome = await send(client, url, "seeded", body, tally)
            assert outcome.text is not None, f"the solo run failed: {outcome.status}"
            solo[prompt] = outcome.text
        start = time.monotonic()
        watcher = asyncio.create_task(watch_rss(client, url, pid, start + warm_after, rss))
        await asyncio.gather(
            *(client_loop(client, url, w, start + duration, solo, tally) for w in range(CLIENTS))
        )
        wall = time.monotonic() - start
        watcher.cancel()
        left = await leftover_sequences(client, url)
        healthy = (await client.get(f"{url}/health")).status_code == 200
    growth = (rss["last"] - rss["warm"]) / rss["warm"] if "warm" in rss else None
    return {
        "clients": CLIENTS,
        "duration_s": round(wall, 1),
        "answered": sum(tally.kinds.values()),
        "by_kind": dict(tally.kinds),
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "rejected_429": tally.statuses[429],
        "seeded_compared": tally.seeded_compared,
        "failures": dict(tally.failures),
        "first_failures": tally.examples,
        "sequences_left": left,
        "healthy_after": healthy,
        "rss_warm_mb": round(rss.get("warm", 0) / 2**20, 1),
        "rss_end_mb": round(rss.get("last", 0) / 2**20, 1),
        "rss_growth_pct": None if growth is None else round(100 * growth, 1),
    }


def verdict(report: dict[str, Any]) -> list[str]:
    """What failed: empty when the soak passed."""
    problems = [f"{n} x {what}" for what, n in report["failures"].items()]
    if report["sequences_left"]:
        problems.append(f"{report['sequences_left']} sequences left running")
    if not report["healthy_after"]:
        problems.append("not healthy afterwards")
    growth = report["rss_growth_pct"]
    if growth is None or growth > 100 * RSS_MARGIN:
        problems.append(f"RSS grew {growth} % after warm-up")
    if report["exit_code"] != 0 or report["tracebacks_in_log"]:
        problems.append(
            f"exit code {report['exit_code']}, {report['tracebacks_in_log']} tracebacks in the log"
        )
    missing = [k for k in KINDS if not report["by_kind"].get(k)]
    if missing or not report["seeded_compared"]:
        problems.append(f"kinds never answered: {missing or ['seeded (compared)']}")
    return problems


class ChatdProcess:
    """A chatd subprocess on a free port, with the soak's settings."""

    def __init__(self, log_path: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        cmd = [sys.executable, "-m", "chatd", "serve", "--port", str(self.port), *SERVER_ARGS]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> None:
        wait_healthy("chatd", self.proc, self.url, Path(self.log.name), timeout)

    def stop(self) -> int:
        """SIGTERM, as an operator would stop it: its exit code (a clean stop is 0)."""
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log.close()
        return code


def run(duration: float, warm_after: float, log_path: str) -> dict[str, Any]:
    """Start chatd, soak it, stop it: the report, with its exit code and log checks."""
    server = ChatdProcess(log_path)
    try:
        server.wait_ready()
        report = asyncio.run(soak(server.url, server.proc.pid, duration, warm_after))
    finally:
        report_exit = server.stop()
    with open(log_path) as f:
        log = f.read()
    report["exit_code"] = report_exit
    report["tracebacks_in_log"] = log.count("Traceback")
    return report


SHORT = {"duration": 60.0, "warm_after": 20.0}
LONG = {"duration": 300.0, "warm_after": 60.0}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--short", action="store_true", help="about a minute (what the tests run)")
    ap.add_argument("--duration", type=float, default=None, help="seconds of load")
    ap.add_argument("--log", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "soak.log"))
    a = ap.parse_args()
    mode = dict(SHORT if a.short else LONG)
    if a.duration:
        mode = {"duration": a.duration, "warm_after": min(60.0, a.duration / 3)}
    report = run(mode["duration"], mode["warm_after"], a.log)
    print(json.dumps(report, indent=2))
    problems = verdict(report)
    print("PASS" if not problems else "FAIL: " + "; ".join(problems))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
