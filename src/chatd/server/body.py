"""A request body, read and parsed within bounds. Whatever bytes a client sends, the answer
is the body as JSON or a 4xx with the HF error body: never a 500, never a stalled loop.

`BodyGuard` (ASGI) refuses a body over --max-body-bytes with 413 before it is read whole, and
one whose next part takes longer than --body-timeout with 408. `parse_json` refuses what
Python's json would choke on later: bytes that are not UTF-8, NaN and Infinity, numbers past
Python's digit limit, nesting deeper than MAX_DEPTH (json and every recursive walk after it
would overflow), and unpaired surrogates (no encoder can write them back).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatd.server.errors import ChatdError, bad_request, error_response

MAX_DEPTH = 64  # a chat request nests a few levels; tool schemas a few dozen at most


class BodyGuard:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            return await error_response(self._too_large())(scope, receive, send)
        read, body_done = 0, False

        async def bounded() -> Message:
            nonlocal read, body_done
            if body_done:  # later reads wait for a disconnect: no deadline on those
                return await receive()
            try:
                async with asyncio.timeout(self.timeout or None):
                    message = await receive()
            except TimeoutError:
                raise ChatdError(
                    408, f"the request body was not sent within {self.timeout:g} s", "timeout"
                ) from None
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.max_bytes:
                    raise self._too_large()
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, bounded, send)

    def _too_large(self) -> ChatdError:
        return ChatdError(
            413, f"the request body is larger than {self.max_bytes} bytes", "validation"
        )


def parse_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"the request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise bad_request(_too_deep()) from None
    except json.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc.msg} at {exc.pos}") from None
    except ValueError as exc:  # a number past the digit limit, NaN, Infinity
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    _check(data)
    return data


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _check(data: Any) -> None:
    """Depth and strings, walked without recursion (the walk itself must not overflow)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _encodable(value)
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise bad_request(_too_deep())
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _encodable(key)
                stack.append((item, depth + 1))


def _encodable(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        message = "the request body holds an unpaired surrogate (\\ud800-\\udfff)"
        raise bad_request(message) from None


def _too_deep() -> str:
    return f"the request body nests deeper than {MAX_DEPTH} levels"
