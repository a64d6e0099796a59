"""Streaming load generator for any OpenAI-compatible /v1/chat/completions server.

    python -m benchmarks.load --url http://127.0.0.1:8000 --concurrency 1,8,32

For each concurrency level C it keeps exactly C streaming requests in flight
(closed loop: a worker sends its next request as soon as the previous one ends)
until --requests-per-level requests have finished, then reports TTFT, inter-token
latency and aggregate completion tokens/s. `run_levels` is importable so that
comparison scripts (benchmarks/vs_llama_server.py) measure servers identically.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

# Varied prompts that invite long answers: greedy decoding of a small model stops
# early on short questions, and we want most requests to run to max_tokens so that
# servers are compared on equal generation lengths (we still count what arrives).
TOPICS = [
    "the history of the printing press",
    "how a steam engine works",
    "the water cycle",
    "the life of honey bees",
    "how computers store numbers",
    "the Roman Empire",
    "volcanoes and plate tectonics",
    "how bread is baked",
    "the solar system",
    "the invention of the telephone",
    "how rainbows form",
    "a day in the life of a lighthouse keeper",
    "ocean currents",
    "how trains run",
    "the migration of birds",
    "how a city gets its water",
]
TEMPLATES = [
    "Write a long, detailed essay about {t}. Use several paragraphs.",
    "Explain {t} step by step to a curious student, in as much detail as you can.",
    "Tell me a long story that involves {t}. Describe everything.",
    "Give a thorough lecture on {t}, covering every aspect you know.",
]
READERS = [
    "a child",
    "an engineer",
    "a historian",
    "a farmer",
    "a sailor",
    "a teacher",
    "a painter",
    "a doctor",
]


def prompt_for(i: int) -> str:
    # Deterministic per index: two runs (or two servers) see the same prompt sequence.
    # 4 x 16 x 8 = 512 distinct prompts, so a server's prompt cache can only reuse the
    # shared chat-template prefix, never a whole earlier prompt (it would flatter TTFT).
    topic = TOPICS[(i // len(TEMPLATES)) % len(TOPICS)]
    reader = READERS[(i // (len(TEMPLATES) * len(TOPICS))) % len(READERS)]
    return TEMPLATES[i % len(TEMPLATES)].format(t=topic) + f" Write it for {reader}."


@dataclass
class Result:
    ok: bool
    ttft: float | None = None  # seconds from sending the request to the first content
    itls: list[float] = field(default_factory=list)  # gaps between content chunks
    tokens: int = 0
    error: str = ""
    text: str = ""  # the answer
    prompt_tokens: int = 0  # from usage, as are the cached ones (0 where not said)
    cached_tokens: int = 0


async def one_request(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    prompt: str | list[dict[str, Any]],  # a user message, or the whole conversation
    max_tokens: int,
    extra_body: dict[str, Any] | None = None,
) -> Result:
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **(extra_body or {}),  # may set a temperature too
    }
    t0 = time.perf_counter()
    last: float | None = None
    res = Result(ok=False)
    chunks = 0
    usage_tokens: int | None = None
    pieces: list[str] = []
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return res
            async for line in r.aiter_lines():
                # SSE: only `data:` lines matter; blank lines and comments separate events.
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                ev = json.loads(data)
                if usage := ev.get("usage"):
                    usage_tokens = usage.get("completion_tokens")
                    res.prompt_tokens = usage.get("prompt_tokens") or 0
                    details = usage.get("prompt_tokens_details") or {}
                    # llama-server also says it in its timings (cache_n).
                    cached = details.get("cached_tokens", (ev.get("timings") or {}).get("cache_n"))
                    res.cached_tokens = cached or 0
                for ch in ev.get("choices") or []:
                    # The first chunk is often role-only; TTFT is to the first *text*.
                    if piece := (ch.get("delta") or {}).get("content"):
                        pieces.append(piece)
                        if last is None:
                            res.ttft = now - t0
                        else:
                            res.itls.append(now - last)
                        last = now
                        chunks += 1
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        res.error = f"{type(e).__name__}: {e}"
        return res
    # Usage is exact; counting chunks undercounts if a server merges tokens per chunk.
    res.tokens = usage_tokens if usage_tokens is not None else chunks
    res.text = "".join(pieces)
    res.ok = res.ttft is not None
    if not res.ok:
        res.error = "stream ended without content"
    return res


def pct(xs: list[float], q: float) -> float | None:
    """Percentile with linear interpolation (numpy's default); None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads so far (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds(server_pid: int | None) -> tuple[float, float, float] | None:
    """(whole machine busy, server process, this process) CPU seconds; None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        server = process_cpu_seconds(server_pid) if server_pid else 0.0
    except (OSError, ValueError, IndexError):
        return None
    t = os.times()
    return busy, server, t.user + t.system


def _other_cpu_pct(
    a: tuple[float, float, float] | None, b: tuple[float, float, float] | None, wall: float
) -> float | None:
    # On a 2-core box, llama.cpp's spinning threads slow down many-fold when anything
    # else runs; this says how much of the machine neither the server nor we used.
    if a is None or b is None or wall <= 0:
        return None
    other = (b[0] - a[0]) - (b[1] - a[1]) - (b[2] - a[2])
    return max(0.0, 100.0 * other / (wall * (os.cpu_count() or 1)))


async def run_level(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    concurrency: int,
    n_requests: int,
    max_tokens: int,
    server_pid: int | None = None,
    first_prompt: int = 0,
    extra_body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    next_i = 0
    results: list[Result] = []

    async def worker() -> None:
        nonlocal next_i
        while next_i < n_requests:
            i = next_i
            next_i += 1  # no await between read and write: safe in one event loop
            prompt = prompt_for(first_prompt + i)
            results.append(await one_request(client, url, model, prompt, max_tokens, extra_body))

    cpu0, t0 = _cpu_seconds(server_pid), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    other = _other_cpu_pct(cpu0, _cpu_seconds(server_pid), wall)

    ok = [r for r in results if r.ok]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    itls = [x for r in ok for x in r.itls]
    tokens = sum(r.tokens for r in ok)
    errors = [r.error for r in results if not r.ok]
    return {
        "concurrency": concurrency,
        "requests": len(ok),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": wall,
        "completion_tokens": tokens,
        "tokens_per_request": tokens / len(ok) if ok else 0.0,
        "tok_per_s": tokens / wall if wall > 0 else 0.0,
        "ttft_p50_s": pct(ttfts, 0.50),
        "ttft_p95_s": pct(ttfts, 0.95),
        "itl_p50_s": pct(itls, 0.50),
        "itl_p95_s": pct(itls, 0.95),
        # Only meaningful with server_pid; otherwise it includes the server itself.
        "other_cpu_pct": other if server_pid else None,
    }


async def resolve_model(client: httpx.AsyncClient, url: str) -> str:
    # Servers differ in which names they accept; asking /v1/models picks a valid one.
    try:
        r = await client.get(f"{url}/v1/models")
        data = r.json().get("data") or []
        if r.status_code == 200 and data:
            return str(data[0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        pass
    return "default"


async def run_levels(
    url: str,
    levels: list[int],
    requests_per_level: int | None = None,
    max_tokens: int = 128,
    model: str | None = None,
    warmup: bool = True,
    server_pid: int | None = None,
    on_level: Callable[[dict[str, Any]], None] | None = None,
    extra_body: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run each concurrency level in turn; one dict of metrics per level.

    server_pid (Linux) adds other_cpu_pct: the share of the machine's CPU that neither
    the server nor this process used during the level; above a few percent the
    numbers are not trustworthy. on_level is called with each row as it completes.

    requests_per_level defaults to max(8, 2*C): two full waves at high concurrency,
    enough samples at C=1, and a whole 1,8,32 run stays around a minute on 2 cores.
    extra_body is merged into every request (e.g. a response_format).
    """
    url = url.rstrip("/")
    # Generous read timeout: at 32 streams on 2 cores a token can take a while.
    timeout = httpx.Timeout(connect=10.0, read=600.0, write=30.0, pool=600.0)
    n_conn = max(levels) + 4
    limits = httpx.Limits(max_connections=n_conn, max_keepalive_connections=n_conn)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        model = model or await resolve_model(client, url)
        if warmup:
            # One short request so lazy initialisation doesn't land in the first level.
            await one_request(client, url, model, "Hello!", 8)
        out = []
        first = 0  # levels continue the prompt sequence instead of repeating it
        for c in levels:
            n = requests_per_level or max(8, 2 * c)
            row = await run_level(
                client, url, model, c, n, max_tokens, server_pid, first, extra_body
            )
            first += n
            row["model"] = model
            out.append(row)
            if on_level:
                on_level(row)
        return out


def pool_rows(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one level as one row: tokens over wall time, median latencies."""
    row = dict(runs[0])
    row["completion_tokens"] = sum(r["completion_tokens"] for r in runs)
    row["wall_s"] = sum(r["wall_s"] for r in runs)
    row["requests"] = sum(r["requests"] for r in runs)
    if "server_cpu_s" in row:  # benchmarks/ab.py measures it
        row["server_cpu_s"] = sum(r["server_cpu_s"] for r in runs)
    row["tok_per_s"] = row["completion_tokens"] / row["wall_s"]
    for key in ("ttft_p50_s", "ttft_p95_s", "itl_p50_s", "itl_p95_s"):
        values = [r[key] for r in runs if r[key] is not None]
        row[key] = statistics.median(values) if values else None
    row["other_cpu_pct"] = max((r["other_cpu_pct"] or 0 for r in runs), default=None)
    return row


Contender = Callable[[int], list[dict[str, Any]]]  # a level -> its run's rows


def alternating(
    levels: list[int], rounds: int, contenders: dict[str, Contender]
) -> dict[str, list[dict[str, Any]]]:
    """Every contender at every level, `rounds` times, in an order that alternates from round
    to round so that drift on a shared machine hits all alike; one pooled row per level each."""
    names = list(contenders)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for level in levels:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for i in range(rounds):
            for name in names if i % 2 == 0 else names[::-1]:
                runs[name] += contenders[name](level)
        for name, got in runs.items():
            rows[name].append(pool_rows(got))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1000:.1f}"

    head = [
        "conc",
        "reqs",
        "err",
        "tok/req",
        "tok/s",
        "TTFT p50 ms",
        "TTFT p95 ms",
        "ITL p50 ms",
        "ITL p95 ms",
        "wall s",
        "other cpu%",
    ]
    body = [
        [
            str(r["concurrency"]),
            str(r["requests"]),
            str(r["errors"]),
            f"{r['tokens_per_request']:.1f}",
            f"{r['tok_per_s']:.1f}",
            ms(r["ttft_p50_s"]),
            ms(r["ttft_p95_s"]),
            ms(r["itl_p50_s"]),
            ms(r["itl_p95_s"]),
            f"{r['wall_s']:.1f}",
            "-" if r.get("other_cpu_pct") is None else f"{r['other_cpu_pct']:.0f}",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = [
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_progress(row: dict[str, Any]) -> None:
    # A level can take minutes on a busy machine; show each one as it lands.
    print(
        f"C={row['concurrency']}: {row['requests']} requests, {row['tok_per_s']:.1f} tok/s, "
        f"{row['wall_s']:.1f} s",
        file=sys.stderr,
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    ap.add_argument(
        "--requests-per-level",
        type=int,
        default=None,
        help="requests per level (default: max(8, 2*C))",
    )
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument(
        "--model", default=None, help="model name to send (default: first id of /v1/models)"
    )
    ap.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="server process id, to report CPU used by other processes (Linux)",
    )
    ap.add_argument("--json", dest="json_out", default=None, help="write the rows as JSON here")
    a = ap.parse_args()
    levels = [int(x) for x in a.concurrency.split(",") if x.strip()]
    rows = asyncio.run(
        run_levels(
            a.url,
            levels,
            a.requests_per_level,
            a.max_tokens,
            a.model,
            server_pid=a.server_pid,
            on_level=print_progress,
        )
    )
    print(f"{a.url}  model={rows[0]['model'] if rows else '?'}  max_tokens={a.max_tokens}")
    print(format_table(rows), flush=True)
    for r in rows:
        if r["first_error"]:
            print(f"C={r['concurrency']}: {r['errors']} failed, first: {r['first_error']}")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
