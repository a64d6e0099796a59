"""Server CPU per streamed SSE chunk: uvicorn's h11 protocol against chatd's (httptools), the
chunk's JSON by json.dumps against orjson (chatd's `sse`).

    python -m benchmarks.http_chunks [--chunks 20000] [--rounds 3]

Each combination serves one streaming response of --chunks chat.completion.chunk events from
a Starlette app in its own process; a client reads it whole and the server's CPU time over
the response, divided by the chunks, is the cost. The rounds alternate the order.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import httpx

from benchmarks.load import process_cpu_seconds
from benchmarks.vs_llama_server import free_port

CHUNK = {
    "id": "chatcmpl-0123456789abcdef0123456789abcdef",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "system_fingerprint": "chatd-0.1.0-llamacpp",
    "choices": [{"index": 0, "delta": {"content": " the"}, "logprobs": None,
                 "finish_reason": None}],
}  # fmt: skip
COMBOS = [("h11", "json"), ("h11", "orjson"), ("httptools", "json"), ("httptools", "orjson")]


def serve(protocol: str, encoder: str, port: int, chunks: int) -> None:
    """The server's own process."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from chatd.server.http import GuardedHttpTools
    from chatd.server.streaming import sse

    def dumps(chunk: dict) -> str:
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    encode = sse if encoder == "orjson" else dumps

    async def events():
        for _ in range(chunks):
            yield encode(CHUNK)

    async def endpoint(request):
        return StreamingResponse(events(), media_type="text/event-stream")

    http = GuardedHttpTools if protocol == "httptools" else H11Protocol
    app = Starlette(routes=[Route("/stream", endpoint)])
    uvicorn.run(app, port=port, http=http, loop="uvloop", log_level="warning")


def cost(protocol: str, encoder: str, chunks: int) -> float:
    """Microseconds of server CPU per chunk, over one response."""
    port = free_port()
    code = "import sys; from benchmarks.http_chunks import serve; " + (
        "serve(*sys.argv[1:3], *map(int, sys.argv[3:]))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, protocol, encoder, str(port), str(chunks)])
    url = f"http://127.0.0.1:{port}/stream"
    try:
        for _ in range(200):
            try:
                httpx.get(url.replace("/stream", "/"))
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        before = process_cpu_seconds(proc.pid)
        with httpx.stream("GET", url) as r:
            for _ in r.iter_raw():
                pass
        return (process_cpu_seconds(proc.pid) - before) / chunks * 1e6
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--chunks", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    got: dict[tuple[str, str], list[float]] = {c: [] for c in COMBOS}
    for r in range(args.rounds):
        for combo in COMBOS if r % 2 == 0 else COMBOS[::-1]:
            got[combo].append(cost(*combo, args.chunks))
    base = statistics.median(got[COMBOS[0]])
    for (protocol, encoder), runs in got.items():
        m = statistics.median(runs)
        print(f"{protocol:<10} {encoder:<7} {m:6.1f} us of server CPU per chunk ({m / base:.2f}x)")


if __name__ == "__main__":
    main()
