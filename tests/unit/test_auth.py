"""ApiKeyMiddleware and load_keys, on a tiny FastAPI app (no model needed)."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from chatd.server import auth
from chatd.server.auth import ApiKeyMiddleware, KeyFileError, load_keys


def make_app(keys: list[str]) -> FastAPI:
    app = FastAPI(redirect_slashes=False)

    @app.get("/items/{item_id}")
    async def item(item_id: int):
        return {"id": item_id}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/playground/{name}")
    async def playground_file(name: str):
        return {"file": name}

    @app.get("/stream")
    async def stream():
        async def chunks():
            for i in range(3):
                yield f"chunk{i};"

        return StreamingResponse(chunks(), media_type="text/plain")

    app.add_middleware(ApiKeyMiddleware, keys=keys)
    return app


def client(keys: list[str]) -> TestClient:
    return TestClient(make_app(keys))


def assert_401(response, *, says: str) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-length"] == str(len(response.content))
    body = response.json()
    assert set(body) == {"error", "error_type"}
    assert body["error_type"] == "authentication"
    assert says in body["error"]


def test_no_keys_means_everything_is_open():
    c = client([])
    assert c.get("/items/1").json() == {"id": 1}
    assert c.get("/stream").text == "chunk0;chunk1;chunk2;"


def test_missing_header_is_401_saying_missing():
    assert_401(client(["key"]).get("/items/1"), says="missing")


def test_empty_header_is_401_saying_missing():
    assert_401(client(["key"]).get("/items/1", headers={"authorization": ""}), says="missing")


def test_wrong_key_is_401_saying_invalid_and_never_echoes_it():
    r = client(["key"]).get("/items/1", headers={"authorization": "Bearer s3cr3t-guess"})
    assert_401(r, says="invalid API key")
    assert "s3cr3t-guess" not in r.text


def test_key_is_case_sensitive():
    r = client(["key"]).get("/items/1", headers={"authorization": "Bearer KEY"})
    assert_401(r, says="invalid API key")


def test_wrong_scheme_is_401():
    r = client(["key"]).get("/items/1", headers={"authorization": "Basic key"})
    assert_401(r, says="Bearer scheme")
    r = client(["key"]).get("/items/1", headers={"authorization": "key"})
    assert_401(r, says="Bearer scheme")


def test_bearer_without_a_token_is_401():
    r = client(["key"]).get("/items/1", headers={"authorization": "Bearer "})
    assert_401(r, says="invalid API key")


def test_a_prefix_or_extension_of_the_key_is_refused():
    c = client(["key"])
    for token in ("ke", "key2", "key key"):
        assert c.get("/items/1", headers={"authorization": f"Bearer {token}"}).status_code == 401


def test_right_key_passes_and_scheme_is_case_insensitive():
    c = client(["key"])
    for scheme in ("Bearer", "bearer", "BEARER"):
        r = c.get("/items/7", headers={"authorization": f"{scheme} key"})
        assert r.status_code == 200, scheme
        assert r.json() == {"id": 7}


def test_second_of_two_keys_is_accepted():
    r = client(["first", "second"]).get("/items/1", headers={"authorization": "Bearer second"})
    assert r.status_code == 200


def test_every_key_is_compared_even_after_a_match(monkeypatch):
    calls = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    c = client(["first", "second", "third"])
    assert c.get("/items/1", headers={"authorization": "Bearer first"}).status_code == 200
    assert calls == [b"first", b"second", b"third"]


def test_public_paths_need_no_key():
    c = client(["key"])
    assert c.get("/health").status_code == 200
    assert c.get("/playground/x.js").json() == {"file": "x.js"}
    # Public but not routed here: the middleware lets them through to the app's 404.
    for path in ("/", "/playground", "/metrics", "/static/app.css"):
        assert c.get(path).status_code == 404, path


def test_public_prefix_with_dot_dot_segment_is_not_public():
    assert not auth.is_public("/static/../v1/chat/completions")
    assert auth.is_public("/static/a/b.js")
    assert not auth.is_public("/staticfoo")
    assert not auth.is_public("/health/")


def test_public_path_is_found_under_a_root_path():
    scope = {"path": "/chatd/health", "root_path": "/chatd"}
    assert auth.route_path(scope) == "/health"
    assert auth.route_path({"path": "/chatdx/health", "root_path": "/chatd"}) == "/chatdx/health"


def test_streaming_response_streams_through_the_middleware():
    c = client(["key"])
    r = c.get("/stream", headers={"authorization": "Bearer key"})
    assert r.status_code == 200
    assert r.text == "chunk0;chunk1;chunk2;"


def test_streaming_chunks_are_not_buffered():
    """Drive the ASGI app directly: the three chunks leave as three body messages."""
    app = make_app(["key"])
    sent: list[dict] = []
    requested = False
    done = asyncio.Event()

    async def receive():
        # The request once, then (like a server) nothing until the client goes away.
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/stream", "raw_path": b"/stream", "root_path": "",
        "query_string": b"", "headers": [(b"authorization", b"Bearer key")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    bodies = [m["body"] for m in sent[1:] if m.get("body")]
    assert bodies == [b"chunk0;", b"chunk1;", b"chunk2;"]


def test_empty_key_is_refused():
    with pytest.raises(ValueError):
        ApiKeyMiddleware(make_app([]), keys=[""])


def test_load_keys_from_flags_and_a_file_with_comments(tmp_path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# team keys\n\nalpha\n  beta  \n# old: gamma\nalpha\n")
    assert load_keys(["flag-key", ""], key_file) == ["flag-key", "alpha", "beta"]


def test_load_keys_without_a_file():
    assert load_keys(["a", "b"], None) == ["a", "b"]
    assert load_keys([], None) == []


def test_load_keys_missing_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(KeyFileError, match="cannot read the API key file .*nope.txt"):
        load_keys([], missing)


def test_load_keys_rejects_a_key_with_whitespace_without_echoing_it(tmp_path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text("good\nbad key\n")
    with pytest.raises(KeyFileError, match="line 2") as info:
        load_keys([], key_file)
    assert "bad key" not in str(info.value)


def test_keys_loaded_from_a_file_protect_the_app(tmp_path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# comment\nfrom-file\n")
    c = client(load_keys([], key_file))
    assert c.get("/items/1").status_code == 401
    assert c.get("/items/1", headers={"authorization": "Bearer from-file"}).status_code == 200
