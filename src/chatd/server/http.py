"""The HTTP server: uvicorn on uvloop with httptools' parser, with the bounds it lacks. uvicorn
waits for a request's headers forever (a client sending them a byte at a time, slowloris,
holds its connection open for good), so each connection gets a deadline from its first byte to
its headers' end, and a request's head is bounded as h11 bounded it; a body sent too slowly is
BodyGuard's (server/body.py); --max-connections caps them all.

httptools rather than h11: it costs the server about a quarter less CPU per streamed chunk
(with orjson for the chunk's JSON, 3.5 us against h11 and json.dumps' 11.5: benchmarks/README.md).

On SIGTERM (or Ctrl-C) the server stops accepting connections, lets running answers finish
for --shutdown-timeout seconds, then ends those left (server/lifetime.py `Shutdown`) and
exits 0."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from chatd.config import Settings

# h11's bound on a request line and its headers (its DEFAULT_MAX_INCOMPLETE_EVENT_SIZE): what
# uvicorn's h11 protocol, which chatd served before, answered with a 400.
MAX_HEAD_BYTES = 16 * 1024


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline from a request's first byte (a new
    connection's opening) to its headers' end, and h11's bound on a request's head: httptools
    alone would keep every header line of a request that never ends them."""

    header_timeout = 10.0  # set per server by `serve`
    _deadline: asyncio.TimerHandle | None = None
    _head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is cut off too

    def on_message_begin(self) -> None:
        self._arm()  # the first byte of the next request on a kept-alive connection
        self._head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            # uvicorn answers any parser error (this one, raised in its callback) with a 400.
            raise httptools.HttpParserError("request head too large")

    def _arm(self) -> None:
        if self._deadline is None:  # a header line now and then does not extend the deadline
            self._deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, ending the answers still running once the shutdown timeout has
    passed: uvicorn alone would wait for them, then cancel their tasks mid-response."""

    def __init__(self, config: uvicorn.Config, end_answers: Callable[[], None], timeout: float):
        super().__init__(config)
        self._end_answers, self._timeout = end_answers, timeout

    async def shutdown(self, sockets=None) -> None:
        asyncio.get_running_loop().call_later(self._timeout, self._end_answers)
        await super().shutdown(sockets)  # stops accepting, then waits for the connections


# uvicorn's own limit, past chatd's: what chatd's end could not stop (a body still being
# read) is cancelled rather than waited for.
_BACKSTOP_S = 5.0


def serve(app, settings: Settings) -> None:
    protocol = type("Http", (GuardedHttpTools,), {"header_timeout": settings.header_timeout})
    config = uvicorn.Config(
        app,
        loop="uvloop",
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=protocol,
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=settings.shutdown_timeout + _BACKSTOP_S,
    )
    server = DrainingServer(config, app.state.shutdown.end, settings.shutdown_timeout)
    # uvicorn raises the signal it handled again once it has shut down, to die of it: a stop
    # that was asked for and done cleanly exits 0 instead.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        server.run()
    except KeyboardInterrupt:
        pass


def _exit_cleanly(signum: int, frame) -> None:
    raise SystemExit(0)
