"""Multi-turn chat, chatd against llama-server, with more conversations than slots.

    python -m benchmarks.multiturn [--model GGUF] [--conversations 8] [--systems 3] [--turns 3] \
        [--concurrency 4] [--parallel 4] [--ctx 2048] [--max-tokens 48] [--rounds 2] \
        [--only chatd|llama-server] [--no-readme] [--json out.json]

Conversations share a few long system prompts and grow turn by turn: each turn sends the whole
history, the server's own earlier answers included. Workers take the conversations in turn, one
turn at a time, so that between two turns of a conversation the others run and take its slot: a
server that keeps only what its slots hold prefills the history again; one that keeps prompt
states in host memory (chatd's prefix store, llama-server's `--cache-ram`) restores it. Both
servers get the same slots and KV per slot, greedy decoding and otherwise their defaults; each
round starts them afresh, in alternating order. Reports the share of prompt tokens served from
cache (each server's own `usage.prompt_tokens_details.cached_tokens`), TTFT p50/p95 and the total
time, and writes them into benchmarks/README.md between the multiturn markers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.load import one_request, pct, resolve_model
from benchmarks.vs_llama_server import (
    CACHE,
    ROOT,
    build_llama_server,
    default_gguf,
    free_port,
    ratio,
    serving,
    wait_quiet,
    write_readme,
)

BUSINESSES = [
    "a travel agency in Lisbon",
    "a cooking school for beginners",
    "a bicycle repair shop",
    "a public library",
    "a small hardware store",
]
RULES = [
    "Greet the customer politely and answer in plain English.",
    "Keep every answer short: two or three sentences at most.",
    "Never invent prices, opening hours or phone numbers you were not given.",
    "If a question is outside the business, say so kindly and offer what you can do.",
    "Use the metric system for every measurement you mention.",
    "Do not give medical, legal or financial advice of any kind.",
    "When you are unsure, say that you are unsure instead of guessing.",
    "Refer to the staff as 'our team' and never name an employee.",
    "Suggest visiting in person for anything that needs to be seen or touched.",
    "Avoid jokes, slang and emoji; stay friendly and professional.",
    "Summarise long requests in one sentence before answering them.",
    "End every answer by asking whether there is anything else you can help with.",
]
QUESTIONS = [
    "What do you offer for someone who has never done this before?",
    "Can you explain how the first visit usually goes?",
    "What should I bring with me?",
    "How long does it usually take?",
    "Is there anything I should avoid doing beforehand?",
    "Can I come with a friend?",
    "What happens if I need to cancel?",
    "Which option would you recommend for a family?",
]


def system_prompt(k: int) -> str:
    rules = " ".join(f"Rule {i + 1}: {RULES[(i + k) % len(RULES)]}" for i in range(len(RULES)))
    return f"You are the assistant of {BUSINESSES[k % len(BUSINESSES)]}. {rules}"


def question(conversation: int, turn: int) -> str:
    return QUESTIONS[(3 * conversation + turn) % len(QUESTIONS)]


async def run_workload(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every turn of every conversation, `--concurrency` in flight: one row of results."""
    # A connection per request: llama-server may close kept-alive ones between requests.
    limits = httpx.Limits(max_keepalive_connections=0)
    timeout = httpx.Timeout(connect=10.0, read=600.0, write=30.0, pool=600.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        model = await resolve_model(client, url)
        await one_request(client, url, model, "Hello!", 4)  # warm-up
        histories = [
            [{"role": "system", "content": system_prompt(k % args.systems)}]
            for k in range(args.conversations)
        ]
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        for k in range(args.conversations):
            queue.put_nowait(k)
        total, turns = args.conversations * args.turns, []

        async def worker() -> None:
            while (k := await queue.get()) is not None:
                done = len(histories[k]) // 2  # system, then a user and an assistant a turn
                messages = [*histories[k], {"role": "user", "content": question(k, done)}]
                turn = await one_request(client, url, model, messages, args.max_tokens)
                if turn.ok and not turn.prompt_tokens:
                    turn.ok, turn.error = False, "no usage in the stream"
                histories[k] = [*messages, {"role": "assistant", "content": turn.text}]
                turns.append(turn)
                if done + 1 < args.turns:
                    queue.put_nowait(k)  # behind the others: its slot is theirs meanwhile
                if len(turns) == total:
                    for _ in range(args.concurrency):
                        queue.put_nowait(None)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        wall = time.perf_counter() - t0
    ok = [t for t in turns if t.ok]
    errors = [t.error for t in turns if not t.ok]
    return {
        "wall_s": wall,
        "turns": len(ok),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "ttfts": [t.ttft for t in ok],
        "prompt_tokens": sum(t.prompt_tokens for t in ok),
        "cached_tokens": sum(t.cached_tokens for t in ok),
        "completion_tokens": sum(t.tokens for t in ok),
    }


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several rounds of one server as one row: mean total time, TTFTs pooled."""
    ttfts = [x for r in runs for x in r["ttfts"]]
    prompt = sum(r["prompt_tokens"] for r in runs)
    return {
        "rounds": len(runs),
        "wall_s": sum(r["wall_s"] for r in runs) / len(runs),
        "turns": sum(r["turns"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "ttft_p50_s": pct(ttfts, 0.5),
        "ttft_p95_s": pct(ttfts, 0.95),
        "cached_share": sum(r["cached_tokens"] for r in runs) / prompt if prompt else 0.0,
        "prompt_tokens": prompt // len(runs),
        "completion_tokens": sum(r["completion_tokens"] for r in runs) // len(runs),
    }


def header(first: str) -> str:
    """The table's head, for `row_text`'s rows; `first` names its first column."""
    return (
        f"| {first} | total s | TTFT p50 ms | TTFT p95 ms | prompt tokens cached | prompt tokens "
        "| completion tokens | errors |\n|---|---|---|---|---|---|---|---|"
    )


def row_text(name: str, row: dict[str, Any]) -> str:
    return (
        f"| {name} | {row['wall_s']:.1f} | {row['ttft_p50_s'] * 1000:.0f} "
        f"| {row['ttft_p95_s'] * 1000:.0f} | {row['cached_share']:.0%} | {row['prompt_tokens']} "
        f"| {row['completion_tokens']} | {row['errors']} |"
    )


def markdown(results: dict[str, dict[str, Any]], cmds: dict[str, list[str]], args) -> str:
    ours, ref = results["chatd"], results["llama-server"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), model `{Path(args.model).name}`: "
        f"{args.conversations} conversations over {args.systems} system prompts, "
        f"{args.turns} turns each, {args.concurrency} in flight, {args.parallel} slots of "
        f"{args.ctx} tokens, temperature 0, {args.max_tokens}-token answers; {args.rounds} rounds "
        "in alternating order (total time: mean of the rounds; TTFT: all turns pooled; "
        "tokens: per round).",
        "",
        f"**chatd is {ratio(ref['wall_s'], ours['wall_s'])}x llama-server's speed on total time "
        f"and {ratio(ref['ttft_p50_s'], ours['ttft_p50_s'])}x on TTFT p50** (target: 1.2x).",
        "",
        header("server"),
        row_text("chatd", ours),
        row_text("llama-server", ref),
        "",
        "Commands:",
        "",
    ]
    for name, cmd in cmds.items():
        shown = ["GGUF" if x == args.model else x for x in cmd]
        shown[0] = Path(shown[0]).name
        shown[shown.index("--port") + 1] = "PORT"
        lines.append(f"- {name}: `{' '.join(shown)}`")
    return "\n".join(lines)


def commands(args: argparse.Namespace) -> dict[str, list[str]]:
    cmds: dict[str, list[str]] = {}
    if args.only != "chatd":
        binary = args.llama_server or str(build_llama_server())
        # -c is the total KV; with --no-kv-unified each slot owns ctx of it, as in chatd.
        cmds["llama-server"] = [
            binary, "-m", args.model, "-t", str(args.threads), "-np", str(args.parallel),
            "-c", str(args.ctx * args.parallel), "--no-kv-unified",
            "--host", "127.0.0.1", "--port", str(free_port()),
        ]  # fmt: skip
    if args.only != "llama-server":
        if not shutil.which(args.chatd):
            sys.exit(f"chatd not found at {args.chatd}")
        # No response cache: a later round would be answered from it without generating.
        cmds["chatd"] = [
            args.chatd, "serve", "--model", args.model, "--host", "127.0.0.1",
            "--port", str(free_port()), "--parallel", str(args.parallel), "--ctx", str(args.ctx),
            "--threads", str(args.threads), "--cache-url", "off",
        ]  # fmt: skip
    return cmds


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M Q4_1)")
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--systems", type=int, default=3, help="system prompts they share")
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4, help="turns in flight")
    ap.add_argument("--parallel", type=int, default=4, help="slots, on both servers")
    ap.add_argument("--ctx", type=int, default=2048, help="context per slot")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2, help="runs of each server, order alternating")
    ap.add_argument("--chatd", default=str(ROOT / ".venv" / "bin" / "chatd"))
    ap.add_argument("--llama-server", default=None, help="use this binary instead of building one")
    ap.add_argument("--only", choices=["chatd", "llama-server"], default=None)
    ap.add_argument("--wait-quiet", type=float, default=600.0, help="seconds to wait for idle")
    ap.add_argument("--json", dest="json_out", default=None)
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    args.model = args.model or default_gguf()
    args.systems = min(args.systems, args.conversations)
    CACHE.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the servers' finally blocks run

    cmds = commands(args)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cmds}
    for r in range(args.rounds):
        for name in list(cmds) if r % 2 == 0 else list(cmds)[::-1]:
            cmd = cmds[name]
            wait_quiet(args.wait_quiet)
            port = int(cmd[cmd.index("--port") + 1])
            with serving(name, cmd, port, CACHE / f"multiturn-{name}.log") as (url, _pid):
                run = asyncio.run(run_workload(url, args))
            runs[name].append(run)
            print(
                f"{name} round {r + 1}: {run['wall_s']:.1f} s, {run['turns']} turns, "
                f"{run['errors']} errors {run['first_error'] or ''}, cached "
                f"{run['cached_tokens']}/{run['prompt_tokens']} prompt tokens",
                flush=True,
            )
    results = {name: pooled(got) for name, got in runs.items()}
    for name, row in results.items():
        print(row_text(name, row))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"results": results, "commands": cmds}, indent=2))
    if len(results) == 2:
        section = markdown(results, cmds, args)
        print(section)
        if not args.no_readme:
            write_readme(section, marker="multiturn")


if __name__ == "__main__":
    main()
