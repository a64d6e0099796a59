"""API keys: `authorization: Bearer <key>` on every non-public request once keys are configured.

Public without a key, so that a browser, a load balancer's probe and a Prometheus scraper work
without one: `/health`, `/`, `/playground`, `/metrics` and anything under `/static/` or
`/playground/`. `/metrics` shows counts and latencies, never prompts, keys or outputs. Everything
else (the chat routes, `/v1/models`, `/info`, `/docs`, `/openapi.json`) needs a key. With no
keys configured, everything is open.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from chatd.server.errors import ChatdError, error_response

PUBLIC_PATHS = frozenset({"/", "/health", "/metrics", "/playground"})
PUBLIC_PREFIXES = ("/static/", "/playground/")


class KeyFileError(ValueError):
    """The API key file is missing, unreadable or holds a malformed line."""


def load_keys(keys: Iterable[str], key_file: Path | None) -> list[str]:
    """The keys given as flags plus those in key_file: one per line; blank lines and lines
    starting with `#` are ignored. Order is kept, duplicates are dropped.

    Raises KeyFileError when the file cannot be read or a key holds whitespace (a Bearer token
    cannot carry it, so such a key could never match). Messages name the line, never the key.
    """
    found: list[str] = []
    for key in keys:
        key = key.strip()
        if key:
            _check_key(key, "a --api-key value")
            found.append(key)
    if key_file is not None:
        try:
            text = Path(key_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise KeyFileError(f"cannot read the API key file {key_file}: {reason}") from exc
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                _check_key(line, f"line {number} of {key_file}")
                found.append(line)
    return list(dict.fromkeys(found))


def _check_key(key: str, where: str) -> None:
    if any(c.isspace() for c in key):
        raise KeyFileError(f"the API key in {where} contains whitespace")


def route_path(scope: Scope) -> str:
    """The path the app routes on: scope["path"] less the root_path it was mounted under."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


def is_public(path: str) -> bool:
    """True for the paths served without a key (see the module docstring)."""
    if path in PUBLIC_PATHS:
        return True
    # A ".." segment never reaches a public file honestly; refuse to let it skip the check.
    return path.startswith(PUBLIC_PREFIXES) and ".." not in path.split("/")


class ApiKeyMiddleware:
    """Pure ASGI middleware (it passes streamed bodies through untouched, unlike
    BaseHTTPMiddleware) that answers 401 to requests without a valid Bearer key.

    The scheme word is case-insensitive; the key is compared case-sensitively, in constant time,
    against every configured key, so the timing tells neither which key nor how much matched.
    """

    def __init__(self, app: ASGIApp, keys: Iterable[str]):
        self.app = app
        self.keys = [k.encode() for k in keys]
        if any(not k.strip() for k in self.keys):
            # An empty key would accept "Bearer " with nothing after it.
            raise ValueError("an API key must not be empty")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.keys or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if is_public(route_path(scope)):
            await self.app(scope, receive, send)
            return
        problem = self._problem(scope)
        if problem is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": problem})
        else:
            err = ChatdError(401, problem, "authentication", headers={"www-authenticate": "Bearer"})
            await error_response(err)(scope, receive, send)

    def _problem(self, scope: Scope) -> str | None:
        """None when the request carries a valid key, else why not (never echoing the key)."""
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None or not header.strip():
            return "missing API key: send the header 'authorization: Bearer <key>'"
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return "the authorization header must use the Bearer scheme"
        if not self._known(token.strip()):
            return "invalid API key"
        return None

    def _known(self, token: bytes) -> bool:
        # No short-circuit: every key is compared whether or not an earlier one matched.
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(token, key)
        return matched
