"""The HTTP server: uvicorn, with the bounds it lacks. uvicorn waits for a request's headers
forever (a client sending them a byte at a time, slowloris, holds its connection open for
good), so each connection gets a deadline from its first byte to its headers' end; a body
sent too slowly is BodyGuard's (server/body.py); --max-connections caps them all.

On SIGTERM (or Ctrl-C) the server stops accepting connections, lets running answers finish
for --shutdown-timeout seconds, then ends those left (server/lifetime.py `Shutdown`) and
exits 0."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from chatd.config import Settings


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose headers take too long."""

    header_timeout = 10.0  # set per server by `serve`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()  # a connection that never sends a byte is cut off too

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self._deadline is not None:
            self._deadline.cancel()  # the headers are in
            self._deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
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
    protocol = type("Http", (GuardedH11,), {"header_timeout": settings.header_timeout})
    config = uvicorn.Config(
        app,
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
