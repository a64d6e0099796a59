"""Every error leaves as the HF body {"error", "error_type"} with the right status: never a
stack trace, never FastAPI's {"detail"}. The layers below raise their own exceptions, which
know nothing of HTTP; `STATUS` below is the one table that turns each into an answer."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatd.chat.errors import RequestError
from chatd.models.errors import (
    ModelFailed,
    ModelLoading,
    ModelNotFound,
    NoDisk,
    NoRoom,
    NoWeights,
    PullRefused,
)

log = logging.getLogger(__name__)


class ChatdError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        error_type: str = "validation",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "error_type": self.error_type, **self.extra}

    def __reduce__(self):  # keyword extras too: it crosses process boundaries (a cluster)
        return _rebuild, (self.status, self.message, self.error_type, self.headers, self.extra)


def _rebuild(status, message, error_type, headers, extra) -> ChatdError:
    return ChatdError(status, message, error_type, headers, **extra)


def bad_request(message: str) -> ChatdError:
    return ChatdError(400, message, "validation")


def client_gone() -> ChatdError:
    """A client that left: 499, which nobody reads but the metrics count."""
    return ChatdError(499, "client closed the request", "cancelled")


def error_response(err: ChatdError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def describe_validation(exc: RequestValidationError | ValidationError) -> str:
    """'temperature: Input should be less than or equal to 2' — the field first, then why."""
    parts = []
    for e in exc.errors():
        if e.get("type") == "json_invalid":
            return "the request body is not valid JSON"
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        # Union members add their type names to the location; they only confuse the reader.
        loc = [x for x in loc if not any(c in x for c in "[]") and x not in _TYPE_NAMES]
        msg = e.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc) or 'body'}: {msg}")
    return "; ".join(dict.fromkeys(parts)) or "invalid request"


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "text", "image_url", "function"}


def _retry_after(seconds: float | None) -> dict[str, str]:
    return {} if seconds is None else {"retry-after": str(max(1, math.ceil(seconds)))}


# What a client sees for each error of the layers below.
STATUS: dict[type[Exception], Callable[[Any], ChatdError]] = {
    RequestError: lambda e: bad_request(str(e)),
    ModelNotFound: lambda e: ChatdError(404, str(e), "not_found"),
    # The HF contract leaves waiting to the caller (x-wait-for-model): don't retry blindly.
    ModelLoading: lambda e: ChatdError(
        503, str(e), "loading", {"x-should-retry": "false"}, estimated_time=e.estimated_time
    ),
    ModelFailed: lambda e: ChatdError(503, str(e), "load_failed", _retry_after(e.retry_after)),
    NoRoom: lambda e: ChatdError(503, str(e), "overloaded", _retry_after(e.retry_after)),
    # A Hub model this server will not download (policy, budget, gated): asking again won't help.
    PullRefused: lambda e: ChatdError(403, str(e), "pull_refused"),
    NoWeights: lambda e: ChatdError(422, str(e), "unsupported_model"),
    NoDisk: lambda e: ChatdError(507, str(e), "insufficient_storage"),
}


def as_chatd(exc: Exception) -> ChatdError:
    """The answer for any error of the table (ChatdError itself as it is)."""
    if isinstance(exc, ChatdError):
        return exc
    for kind, answer in STATUS.items():
        if isinstance(exc, kind):
            return answer(exc)
    raise TypeError(f"no status for {type(exc).__name__}") from exc


async def _known(_: Request, exc: Exception):
    return error_response(as_chatd(exc))


async def _gone(_: Request, exc: ClientDisconnect):
    """A client that leaves while sending its body is no server error."""
    return error_response(client_gone())


def install(app: FastAPI) -> None:
    for kind in (ChatdError, *STATUS):
        app.add_exception_handler(kind, _known)
    app.add_exception_handler(ClientDisconnect, _gone)
    app.add_middleware(Unexpected)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        return error_response(bad_request(describe_validation(exc)))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException):  # 404, 405 (its Allow header kept), ...
        kind = "not_found" if exc.status_code == 404 else "validation"
        return error_response(ChatdError(exc.status_code, str(exc.detail), kind, exc.headers))


class Unexpected:
    """A bug's 500, with the HF body, logged once. Caught here rather than by Starlette's
    outermost handler, which re-raises to the server: the server then drops the kept-alive
    connection without saying so, and the client's next request on it is reset."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            log.exception("unhandled error")
            if started or scope["type"] != "http":
                raise  # too late for a status: the server closes the connection
            err = ChatdError(500, "internal server error", "generation")
            await error_response(err)(scope, receive, send)  # the connection stays usable
