"""chatd through a Ray Serve cluster on this machine (all on 127.0.0.1) against one chatd
process on the same cores.

    python -m benchmarks.cluster [--cores 2] [--replicas 2] [--parallel 8] [--concurrency 1,8]
        [--requests-per-level N] [--max-tokens 128] [--conversations 8] [--turns 4]
        [--in-flight REPLICAS] [--rounds 2]

1. The load of benchmarks.load (run_levels: the same prompts, streams and counts) against
   `chatd serve --threads CORES --parallel P` and against REPLICAS replicas of CORES/REPLICAS
   threads and P/REPLICAS slots each, in alternating order round after round (a fresh
   cluster each round): throughput ratio and added TTFT per level.
2. benchmarks.multiturn's workload through the cluster, prefix routing on and off in
   alternating order (a fresh deployment each): CONVERSATIONS conversations, each with its
   own long system prompt, IN_FLIGHT turns at a time taken from the conversations in turn
   (so that the others run between two turns of one), TURNS turns each sending the history;
   TTFT p50 and the share of prompt tokens served from cache. Run twice: with the replicas'
   host prefix store (their default), which keeps a conversation on every replica it ran on,
   and without (`--prefix-cache-bytes 0`), where a replica keeps only what its slots hold.

Needs the chatd[cluster] extra. Keep the machine quiet (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from benchmarks import multiturn
from benchmarks.load import format_table, pool_rows, print_progress, run_levels
from benchmarks.vs_llama_server import CACHE, free_port, serving, wait_healthy
from chatd.models.sources import SMOLLM2_ID

# The replicas' host prefix store: their default, and off (a replica keeps what its slots hold).
STORES = {"on": {}, "off": {"prefix_cache_bytes": 0}}


def deploy(settings_given: dict[str, Any]) -> str:
    from chatd.cluster import deploy
    from chatd.config import load_settings

    settings = load_settings(settings_given)
    deploy.start(settings)
    url = f"http://127.0.0.1:{settings.port}"
    wait_healthy("chatd on the cluster", None, url, None)  # 503 until a replica runs
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
    ap.add_argument("--in-flight", type=int, default=None, help="turns at a time (--replicas)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default=SMOLLM2_ID)
    a = ap.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Ray's driver logs at INFO
    levels = [int(x) for x in a.concurrency.split(",") if x.strip()]
    threads = max(1, a.cores // a.replicas)
    port = free_port()
    command = [sys.executable, "-m", "chatd", "serve", "--port", str(port), "--model", a.model,
               "--threads", str(a.cores), "--parallel", str(a.parallel), "--cache-url", "off",
               "--pull", "never", "--log-level", "warning"]  # fmt: skip
    given = {"models": [a.model], "threads": threads, "parallel": max(1, a.parallel // a.replicas),
             "replicas": a.replicas, "cache_url": "off", "pull": "never", "port": free_port(),
             "log_level": "warning"}  # fmt: skip

    workload = argparse.Namespace(
        conversations=a.conversations, systems=a.conversations, turns=a.turns,
        concurrency=a.in_flight or a.replicas, max_tokens=32,
    )  # fmt: skip

    def load(url: str) -> list[dict[str, Any]]:
        return asyncio.run(
            run_levels(url, levels, a.requests_per_level, a.max_tokens, on_level=print_progress)
        )

    def one_process() -> list[dict[str, Any]]:
        with serving("one process", command, port, CACHE / "cluster-single.log") as (url, _):
            return load(url)

    def cluster(round_: int, talks: dict) -> list[dict[str, Any]]:
        from chatd.cluster.local import loopback_cluster

        with loopback_cluster(nodes=a.replicas + 1, cpus=threads):
            rows = load(deploy(given))
            for store, changes in STORES.items():
                for routing in (True, False) if round_ % 2 == 0 else (False, True):
                    url = deploy({**given, **changes, "prefix_routing": routing})
                    got = asyncio.run(multiturn.run_workload(url, workload))
                    name = f"{store}, {'prefix' if routing else 'default'}"
                    print(multiturn.row_text(name, multiturn.pooled([got])), flush=True)
                    talks.setdefault((store, routing), []).append(got)
        return rows

    single_runs, cluster_runs, talks = [], [], {}
    for r in range(a.rounds):
        for name in ("one", "cluster") if r % 2 == 0 else ("cluster", "one"):
            if name == "one":
                single_runs.append(one_process())
            else:
                cluster_runs.append(cluster(r, talks))
    single = [pool_rows([run[i] for run in single_runs]) for i in range(len(levels))]
    many = [pool_rows([run[i] for run in cluster_runs]) for i in range(len(levels))]

    print(f"one process: --threads {a.cores} --parallel {a.parallel}, {a.rounds} rounds")
    print(format_table(single))
    print(f"cluster: {a.replicas} replicas x --threads {threads} (same {a.cores} cores)")
    print(format_table(many))
    for one, two in zip(single, many, strict=True):
        added = (two["ttft_p50_s"] or 0) - (one["ttft_p50_s"] or 0)
        ratio = two["tok_per_s"] / one["tok_per_s"]
        print(f"C={one['concurrency']}: cluster/one tok/s {ratio:.2f}, "
              f"TTFT p50 {added * 1000:+.0f} ms")  # fmt: skip
    print(f"{a.conversations} conversations x {a.turns} turns, {workload.concurrency} in flight:")
    print(multiturn.header("prefix store, router"))
    for store in STORES:
        on, off = (multiturn.pooled(talks[(store, routing)]) for routing in (True, False))
        print(multiturn.row_text(f"{store}, prefix", on))
        print(multiturn.row_text(f"{store}, default", off))
        speedup = off["ttft_p50_s"] / on["ttft_p50_s"]
        print(f"prefix store {store}: prefix routing TTFT p50 {speedup:.2f}x the default router's")


if __name__ == "__main__":
    main()
