"""chatd through a Ray Serve cluster on this machine (all on 127.0.0.1) against one chatd
process on the same cores.

    python -m benchmarks.cluster [--cores 2] [--replicas 2] [--concurrency 1,8]
        [--requests-per-level N] [--max-tokens 128] [--conversations 8] [--turns 4]

1. The load of benchmarks.load (run_levels: the same prompts, streams and counts) against
   `chatd serve --threads CORES --parallel P` and against REPLICAS replicas of CORES/REPLICAS
   threads and P/REPLICAS slots each: throughput ratio and added TTFT per level.
2. A multi-conversation workload through the cluster, prefix routing on, then off (a fresh
   deployment each): CONVERSATIONS conversations at once, each with its own long system
   prompt, TURNS turns one after another; TTFT p50 of the turns after the first (those
   that can reuse a cached prefix).

Needs the chatd[cluster] extra. Keep the machine quiet (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import time
from typing import Any

import httpx

from benchmarks.load import format_table, one_request, pct, print_progress, run_levels
from benchmarks.vs_llama_server import free_port
from chatd.models.sources import SMOLLM2_ID


def system_prompt(i: int) -> str:
    """A long system prompt (~400 tokens) of its own per conversation, different from its
    first word (the prefix router compares characters)."""
    name = ["Ada", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ivy", "Jo"][i % 10] + str(i)
    rules = " ".join(f"Rule {k}: answers about topic {i} stay short and plain." for k in range(30))
    return f"{name} is your name. {rules}"


async def conversations(url: str, model: str, n: int, turns: int, max_tokens: int) -> dict:
    """Every conversation at once, its turns in order; TTFT of the later turns."""
    timeout = httpx.Timeout(connect=10.0, read=600.0, write=30.0, pool=600.0)
    later: list[float] = []
    errors = 0
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=n + 4)) as c:

        async def talk(i: int) -> None:
            nonlocal errors
            for turn in range(turns):
                messages = [
                    {"role": "system", "content": system_prompt(i)},
                    {"role": "user", "content": f"Question {turn}: name one thing."},
                ]
                result = await one_request(c, url, model, messages, max_tokens)
                errors += not result.ok
                if result.ok and turn:
                    later.append(result.ttft)

        await asyncio.gather(*(talk(i) for i in range(n)))
    return {"ttft_p50_s": pct(later, 0.5), "ttft_p95_s": pct(later, 0.95), "errors": errors}


def single_process(cores: int, parallel: int, model: str):
    port = free_port()
    command = [sys.executable, "-m", "chatd", "serve", "--port", str(port), "--model", model,
               "--threads", str(cores), "--parallel", str(parallel), "--cache-url", "off",
               "--pull", "never", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)
    return proc, url


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc and proc.poll() is not None:
            raise RuntimeError(f"the server at {url} exited")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


def deploy(settings_given: dict[str, Any]) -> str:
    from chatd.cluster import deploy
    from chatd.config import load_settings

    settings = load_settings(settings_given)
    deploy.start(settings)
    url = f"http://127.0.0.1:{settings.port}"
    wait_healthy(url)
    return url


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8, help="slots in all (split over replicas)")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--requests-per-level", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--model", default=SMOLLM2_ID)
    a = ap.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Ray's driver logs at INFO
    levels = [int(x) for x in a.concurrency.split(",") if x.strip()]
    threads = max(1, a.cores // a.replicas)

    def load(url: str) -> list[dict[str, Any]]:
        return asyncio.run(
            run_levels(url, levels, a.requests_per_level, a.max_tokens, on_level=print_progress)
        )

    proc, url = single_process(a.cores, a.parallel, a.model)
    try:
        single = load(url)
    finally:
        proc.terminate()
        proc.wait()

    from chatd.cluster.local import loopback_cluster

    given = {"models": [a.model], "threads": threads, "parallel": max(1, a.parallel // a.replicas),
             "replicas": a.replicas, "cache_url": "off", "pull": "never", "port": free_port(),
             "log_level": "warning"}  # fmt: skip
    with loopback_cluster(nodes=a.replicas + 1, cpus=threads):
        url = deploy(given)
        cluster = load(url)
        routed = {}
        for prefix_routing in (True, False):
            url = deploy({**given, "prefix_routing": prefix_routing})
            routed[prefix_routing] = asyncio.run(
                conversations(url, a.model, a.conversations, a.turns, 16)
            )

    print(f"one process: --threads {a.cores} --parallel {a.parallel}")
    print(format_table(single))
    print(f"cluster: {a.replicas} replicas x --threads {threads} (same {a.cores} cores)")
    print(format_table(cluster))
    for one, many in zip(single, cluster, strict=True):
        ratio = many["tok_per_s"] / one["tok_per_s"] if one["tok_per_s"] else float("nan")
        added = (many["ttft_p50_s"] or 0) - (one["ttft_p50_s"] or 0)
        print(f"C={one['concurrency']}: cluster/one tok/s {ratio:.2f}, "
              f"TTFT p50 +{added * 1000:.0f} ms")  # fmt: skip
    on, off = routed[True], routed[False]
    print(f"{a.conversations} conversations x {a.turns} turns, TTFT p50 of later turns: "
          f"prefix routing {_ms(on['ttft_p50_s'])}, default router {_ms(off['ttft_p50_s'])}, "
          f"speed-up {_ratio(off['ttft_p50_s'], on['ttft_p50_s'])} "
          f"(errors {on['errors']}/{off['errors']})")  # fmt: skip


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


if __name__ == "__main__":
    main()
