"""A fake Hugging Face Hub on 127.0.0.1: exactly the routes huggingface_hub 2.4.0 calls to plan
and download a model (read from its hf_api.py, file_download.py and _snapshot_download.py):

- `GET /api/models/{repo}` and `/api/models/{repo}/revision/{rev}`: model info, the commit
  (`sha`), `gated`, and `siblings` with their sizes;
- `GET /api/models/{repo}/tree/{rev}`: the (recursive) file listing;
- `HEAD|GET /{repo}/resolve/{rev}/{path}`: a file, with `ETag`, `X-Repo-Commit`,
  `X-Linked-Etag`, `X-Linked-Size`, `Content-Length`, and `Range: bytes=N-` answered 206.

Errors are the Hub's: an anonymous request for a missing repo is 401 (404 with a token),
`X-Error-Code` RepoNotFound, GatedRepo (401 anonymous, 403 with a token without access),
RevisionNotFound, EntryNotFound. No Xet headers are ever sent, so downloads are plain HTTP.

Files are bytes or paths on disk (served in chunks, not read whole), or a declared size with no
content (a model too large to fetch). Every request is recorded; faults can be injected: a
connection dropped mid-file once, a file whose GET fails, a slow repo.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHUNK = 64 * 1024


@dataclass
class HubFile:
    content: bytes | Path | None  # None: only a declared size (never fetched)
    size: int = 0

    def __post_init__(self):
        if isinstance(self.content, bytes):
            self.size = len(self.content)
        elif isinstance(self.content, Path):
            self.size = self.content.stat().st_size

    @property
    def sha256(self) -> str:
        return _digest(self.content) if self.content is not None else "0" * 64

    def read(self, start: int, end: int):
        """The bytes [start, end) in chunks."""
        if isinstance(self.content, bytes):
            for at in range(start, end, CHUNK):
                yield self.content[at : min(end, at + CHUNK)]
            return
        with self.content.open("rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                left -= len(chunk)
                yield chunk


_DIGESTS: dict[object, str] = {}


def _digest(content: bytes | Path) -> str:
    key = content if isinstance(content, Path) else hashlib.sha1(content).digest()
    if key not in _DIGESTS:
        h = hashlib.sha256()
        if isinstance(content, Path):
            with content.open("rb") as f:
                while block := f.read(2**20):
                    h.update(block)
        else:
            h.update(content)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


@dataclass
class Repo:
    files: dict[str, HubFile]
    gated: bool = False
    bytes_per_second: float = 0  # 0: as fast as it goes
    sha: str = ""
    info_gate: threading.Event | None = None  # the metadata answers only once it is set

    def __post_init__(self):
        if not self.sha:
            self.sha = hashlib.sha1(json.dumps(sorted(self.files)).encode()).hexdigest()


@dataclass(frozen=True)
class Hit:
    method: str
    repo: str
    kind: str  # info | tree | resolve
    path: str = ""
    range_start: int = 0


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    tokens: frozenset[str] = frozenset({"hf_good"})  # tokens that open gated repos
    hits: list[Hit] = field(default_factory=list)
    drop_once: dict[tuple[str, str], int] = field(default_factory=dict)  # -> bytes sent first
    failing: set[tuple[str, str]] = field(default_factory=set)  # GETs answered 500

    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        self._server.shutdown()

    def count(self, repo: str, kind: str | None = None, method: str | None = None) -> int:
        return len(self.requests(repo, kind, method))

    def requests(self, repo: str, kind: str | None = None, method: str | None = None) -> list[Hit]:
        return [
            h for h in list(self.hits)
            if h.repo == repo and kind in (None, h.kind) and method in (None, h.method)
        ]  # fmt: skip

    def fetched(self, repo: str) -> list[str]:
        """The files of `repo` whose content was sent (GET), in order."""
        return [h.path for h in self.requests(repo, "resolve", "GET")]


_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<kind>revision|tree)/(?P<rest>.+))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def _route(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        if m := _API.fullmatch(path):
            self._api(method, m["repo"], m["kind"], m["rest"] or "main")
        elif m := _RESOLVE.fullmatch(path):
            self._resolve(method, m["repo"], m["rev"], m["path"])
        else:
            self._error(404, "EntryNotFound", "no such route")

    def _repo(self, name: str) -> Repo | None:
        repo = self.hub.repos.get(name)
        if repo is None:
            # The real Hub: 401 to an anonymous caller (a private repo looks the same), else 404.
            self._error(401 if not self._token() else 404, "RepoNotFound", "Repository not found")
        return repo

    def _token(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth.removeprefix("Bearer ").strip() or None

    def _api(self, method: str, name: str, kind: str | None, rest: str) -> None:
        kind = "tree" if kind == "tree" else "info"
        self.hub.hits.append(Hit(method, name, kind))
        repo = self._repo(name)
        if repo is None:
            return
        if repo.info_gate is not None:
            repo.info_gate.wait(60)
        revision = rest.split("/", 1)[0]
        if revision not in ("main", repo.sha):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if kind == "info":
            body = {
                "id": name,
                "modelId": name,
                "sha": repo.sha,
                "private": False,
                "gated": "auto" if repo.gated else False,
                "siblings": [{"rfilename": p, "size": f.size} for p, f in repo.files.items()],
            }
        else:
            body = [
                {"type": "file", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": f.size,
                 "path": p}
                for p, f in repo.files.items()
            ]  # fmt: skip
        self._json(body)

    def _resolve(self, method: str, name: str, revision: str, path: str) -> None:
        start = _range_start(self.headers.get("range"))
        self.hub.hits.append(Hit(method, name, "resolve", path, start))
        repo = self._repo(name)
        if repo is None:
            return
        if repo.gated and self._token() not in self.hub.tokens:
            status = 401 if not self._token() else 403
            return self._error(status, "GatedRepo", "Access to model is restricted")
        if revision not in ("main", repo.sha):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        file = repo.files.get(path)
        if file is None:
            return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": repo.sha})
        if method == "GET" and (name, path) in self.hub.failing:
            return self._error(500, None, "Internal Error")
        etag = f'"{file.sha256}"'
        headers = {
            "ETag": etag,
            "X-Repo-Commit": repo.sha,
            "X-Linked-Etag": etag,
            "X-Linked-Size": str(file.size),
            "Accept-Ranges": "bytes",
        }
        self.send_response(206 if start else 200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(file.size - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{file.size - 1}/{file.size}")
        self.end_headers()
        if method == "HEAD":
            return
        try:
            self._send_body(repo, name, path, file, start)
        except ConnectionError:  # the client went away (a chatd stopped mid-download)
            self.close_connection = True

    def _send_body(self, repo: Repo, name: str, path: str, file: HubFile, start: int) -> None:
        drop_at = self.hub.drop_once.pop((name, path), None)
        sent = start
        for chunk in file.read(start, file.size):
            if drop_at is not None and sent + len(chunk) > drop_at:
                self.wfile.write(chunk[: drop_at - sent])
                self.wfile.flush()
                self.close_connection = True  # the server "dies" mid-file
                self.connection.shutdown(2)
                return
            self.wfile.write(chunk)
            sent += len(chunk)
            if repo.bytes_per_second:
                time.sleep(len(chunk) / repo.bytes_per_second)

    def _json(self, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, code: str | None, message: str, extra=None) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _range_start(header: str | None) -> int:
    match = re.fullmatch(r"bytes=(\d+)-", header or "")
    return int(match[1]) if match else 0


def file_sha256(path: Path) -> str:
    return _digest(Path(path).resolve())
