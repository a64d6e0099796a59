"""Hostile bytes and slow clients against a real chatd: every one gets a 4xx with the HF body
(or its connection closed), never a 500 or a stall, and the server answers right after.
Numbers in the names are issue 12's items."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import pytest

from chatd.models.registry import Registry
from chatd.models.sources import ModelSource
from chatd.server.app import create_app
from tests.conftest import Server, serve_in_thread

BODY_LIMIT = 200_000


@pytest.fixture(scope="session")
def guarded():
    """A small server with tight connection limits, so that the slow cases are quick."""
    with Server(
        "--parallel", "2", "--ctx", "512", "--cache-url", "memory",
        "--max-body-bytes", str(BODY_LIMIT), "--header-timeout", "1", "--body-timeout", "1",
    ) as srv:  # fmt: skip
        srv.wait_ready()
        yield srv


def post_raw(url: str, content: bytes, **headers) -> httpx.Response:
    headers.setdefault("content-type", "application/json")
    return httpx.post(f"{url}/v1/chat/completions", content=content, headers=headers, timeout=60)


def assert_hf_4xx(r: httpx.Response, status: int = 400, *words: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"error", "error_type"} and "detail" not in body
    for word in words:
        assert word in body["error"], body
    return body


def still_serving(url: str) -> None:
    r = httpx.post(
        f"{url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        timeout=60,
    )
    assert r.status_code == 200, r.text


MESSAGE = b'{"messages": [{"role": "user", "content": "%s"}], "max_tokens": 2, "temperature": 0}'


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (MESSAGE.replace(b"%s", b"hi \xff\xfe"), ["UTF-8"]),  # 1
        (bytes(range(128, 256)) * 4, ["UTF-8"]),  # 1: random non-UTF-8 bytes
        (MESSAGE.replace(b"%s", b"a\\ud800b"), ["surrogate"]),  # 2: cached (temperature 0)
        (b"[" * 100_000, ["nests deeper"]),  # 3
        (MESSAGE[:-1] + b', "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", ["nests deeper"]),
        (MESSAGE[:-1] + b', "x": ' + b'{"a":' * 500 + b"1" + b"}" * 500 + b"}", ["nests"]),
        (MESSAGE[:-1] + b', "seed": ' + b"9" * 5000 + b"}", ["not valid JSON"]),  # 4
        (MESSAGE.replace(b'"temperature": 0', b'"temperature": NaN'), ["NaN"]),
        (MESSAGE.replace(b'"temperature": 0', b'"temperature": Infinity'), ["Infinity"]),
    ],
    ids=[
        "utf8-in-string",
        "random-bytes",
        "lone-surrogate",
        "deep-array",
        "deep-unknown-field",
        "deep-object",
        "huge-integer",
        "nan",
        "infinity",
    ],  # fmt: skip
)
def test_bytes_no_parser_takes_are_400(base_url, content, words):
    assert_hf_4xx(post_raw(base_url, content), 400, *words)
    still_serving(base_url)


def test_body_over_the_limit_is_413_declared_or_not(guarded):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * BODY_LIMIT}]}).encode()
    assert_hf_4xx(post_raw(guarded.url, big), 413, str(BODY_LIMIT))

    def chunks():  # no content-length: counted as it streams in
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    assert_hf_4xx(post_raw(guarded.url, chunks()), 413)
    still_serving(guarded.url)


def test_text_no_context_can_hold_is_refused_before_tokenising(guarded):
    """8: within the body limit but far past the context: refused from its byte count."""
    r = post_raw(guarded.url, MESSAGE.replace(b"%s", b"word " * 30_000))
    assert_hf_4xx(r, 400, "bytes of text", "512 tokens")


def test_a_default_body_limit_fits_one_data_url_image_of_the_largest_size():
    from chatd.config import Settings

    s = Settings(image_max_bytes=20 * 2**20)
    assert 20 * 2**20 * 4 / 3 < s.body_limit < 20 * 2**20 * 4 / 3 + 8 * 2**20
    assert Settings(max_body_bytes=1000).body_limit == 1000


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sent before closing, or fail if it keeps the connection past `seconds`."""
    sock.settimeout(seconds)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except TimeoutError:
        pytest.fail(f"the server kept the connection open past {seconds} s; sent {got[:200]!r}")
    return got


def test_slow_headers_are_cut_off_and_others_are_served(guarded):
    """9: slowloris. The header deadline is 1 s; a connection still open after 10 s fails."""
    sock = _connect(guarded.url)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    idle = _connect(guarded.url)  # never sends a byte
    assert httpx.get(f"{guarded.url}/health", timeout=5).status_code == 200
    for _ in range(3):  # a header line now and then does not extend the deadline
        sock.sendall(b"X-Slow: 1\r\n")
        time.sleep(0.3)
    _closed_within(sock, 10)
    _closed_within(idle, 10)
    sock.close()
    idle.close()


def test_slow_headers_of_a_kept_alive_connections_next_request_are_cut_off(guarded):
    sock = _connect(guarded.url)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _read_response(sock).startswith(b"HTTP/1.1 200")
    sock.sendall(b"GET /health HTTP/1.1\r\n")  # the next request, its headers never ended
    assert _closed_within(sock, 10) == b""
    sock.close()


def test_a_request_head_past_16_kib_is_400_and_others_are_served(guarded):
    sock = _connect(guarded.url)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    reply = _closed_within(sock, 10)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    still_serving(guarded.url)


def test_a_stalled_body_is_408(guarded):
    sock = _connect(guarded.url)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n" + b'{"messages": '
    )
    reply = _closed_within(sock, 10)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b'"error_type":"timeout"' in reply.replace(b" ", b"")


def test_a_client_leaving_mid_body_is_no_server_error(guarded):
    """10: logged neither as a 500 nor with a traceback."""
    sock = _connect(guarded.url)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n" + b'{"messages": '
    )
    sock.close()
    still_serving(guarded.url)
    log = guarded.log.read_text()
    assert "Traceback" not in log and "unhandled error" not in log


def test_after_a_500_the_kept_alive_connection_still_answers(tmp_path):
    """11: a bug's 500 has the HF body, and the next request on the same connection works."""
    registry = Registry(_settings(), [ModelSource("test/none", tmp_path / "none.gguf")])
    app = create_app(_settings(), registry)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("a bug")

    with serve_in_thread(app) as url:
        sock = _connect(url)
        sock.sendall(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
        first = _read_response(sock)
        assert first.startswith(b"HTTP/1.1 500") and b'"error_type":"generation"' in first
        assert b"a bug" not in first
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(sock).startswith(b"HTTP/1.1 200")
        sock.close()


def _settings():
    from chatd.config import Settings

    return Settings(cache_url="off")


def _read_response(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response with a content-length, read whole; fails if the server closes
    the connection first."""
    data = b""

    def more() -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            pytest.fail(f"the server closed the connection; it had sent {data[:200]!r}")
        return chunk

    while b"\r\n\r\n" not in data:
        data += more()
    head, _, rest = data.partition(b"\r\n\r\n")
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    length = int({k.lower(): v for k, v in fields.items()}[b"content-length"])
    while len(rest) < length:
        rest += more()
    return head + b"\r\n\r\n" + rest


def test_405_keeps_its_allow_header(base_url):
    """12"""
    r = httpx.get(f"{base_url}/v1/chat/completions")
    assert_hf_4xx(r, 405)
    assert r.headers["allow"] == "POST"


PYDANTIC_TOOL = {
    "type": "function",
    "function": {
        "name": "book",
        "parameters": {
            "$defs": {
                "Place": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 12}},
                    "required": ["city"],
                    "additionalProperties": False,
                }
            },
            "type": "object",
            "properties": {"to": {"$ref": "#/$defs/Place"}},
            "required": ["to"],
            "additionalProperties": False,
        },
    },
}


@pytest.mark.parametrize(
    "choice", ["auto", "required", {"type": "function", "function": {"name": "book"}}]
)
def test_tools_with_refs_work_in_every_mode(base_url, choice):
    """13: a pydantic-made schema ($defs, $ref); a demanded call follows it."""
    r = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "Book me a trip to Paris."}],
            "tools": [PYDANTIC_TOOL],
            "tool_choice": choice,
            "max_tokens": 60,
            "temperature": 0,
        },  # fmt: skip
        timeout=120,
    )
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    if choice == "auto" and not message.get("tool_calls"):
        return  # the model may answer in text
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "book"
    if r.json()["choices"][0]["finish_reason"] == "tool_calls":
        params = PYDANTIC_TOOL["function"]["parameters"]
        jsonschema.validate(json.loads(call["function"]["arguments"]), params)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "f"}}])
def test_a_demanded_call_without_tools_is_400(base_url, choice):
    """14"""
    r = post_raw(base_url, json.dumps({"messages": [{"role": "user", "content": "Hi"}],
                                       "tool_choice": choice}).encode())  # fmt: skip
    assert_hf_4xx(r, 400, "no tools")


def test_json_schema_without_a_schema_is_400(base_url):
    """15"""
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
            "response_format": {"type": "json_schema"}}  # fmt: skip
    assert_hf_4xx(post_raw(base_url, json.dumps(body).encode()), 400, "json_schema.schema")


def test_tgi_json_schema_shape_is_followed(base_url):
    """15: TGI's {"type": "json_schema", "value": {"name", "schema"}}: the schema is used."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}  # fmt: skip
    body = {
        "messages": [{"role": "user", "content": "Is the sky blue? Answer in JSON."}],
        "max_tokens": 30, "temperature": 0,
        "response_format": {"type": "json_schema", "value": {"name": "a", "schema": schema}},
    }  # fmt: skip
    r = post_raw(base_url, json.dumps(body).encode())
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    jsonschema.validate(json.loads(choice["message"]["content"]), schema)


def test_a_huge_model_id_is_not_echoed_whole(base_url):
    """19"""
    body = {"model": "m" * 100_000, "messages": [{"role": "user", "content": "Hi"}]}
    r = post_raw(base_url, json.dumps(body).encode())
    assert len(assert_hf_4xx(r, 404)["error"]) < 200


def test_a_slow_grammar_check_does_not_stall_the_server(base_url):
    """8: grammars are compiled and checked off the event loop. A pathological regex takes
    most of a second to be refused; /health is answered meanwhile, not after it."""
    body = {
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
        "response_format": {"type": "regex", "value": "(q{1001}){1000}"},  # in no other test
    }  # fmt: skip
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.post, f"{base_url}/v1/chat/completions", json=body, timeout=60)
        time.sleep(0.2)  # the request is in: its check is running
        assert httpx.get(f"{base_url}/health", timeout=30).status_code == 200
        answered_first = slow.done()
        assert_hf_4xx(slow.result(), 400, "no output can follow")
    assert not answered_first
