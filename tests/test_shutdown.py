"""Graceful shutdown of a real chatd process: SIGTERM stops accepting connections, lets the
running answers finish up to --shutdown-timeout, then ends those left with an SSE error event
(a stream) or a 503 (a JSON answer); the process exits 0 with no traceback in its log."""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import httpx
import pytest

from tests.conftest import NO_END, Server

SHUTDOWN_TIMEOUT = 10
# Far more than the model can write in SHUTDOWN_TIMEOUT seconds on a CPU, and far less.
LONG = 3000
SHORT = 5


@pytest.fixture
def server():
    with Server(
        "--parallel", "4", "--ctx", "4096", "--cache-url", "off",
        "--shutdown-timeout", str(SHUTDOWN_TIMEOUT),
    ) as srv:  # fmt: skip
        srv.wait_ready()
        yield srv


def body(max_tokens: int, stream: bool) -> dict:
    return {
        "messages": [{"role": "user", "content": "Write a long story about the sea."}],
        "max_tokens": max_tokens,
        "logit_bias": NO_END,
        "stream": stream,
    }


class Stream(threading.Thread):
    """One streaming request read on a thread: its `data:` payloads, and when the first came."""

    def __init__(self, url: str, max_tokens: int):
        super().__init__(daemon=True)
        self.url, self.max_tokens = url, max_tokens
        self.status: int | None = None
        self.events: list[str] = []
        self.first = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with httpx.stream(
                "POST", f"{self.url}/v1/chat/completions", json=body(self.max_tokens, True),
                timeout=60,
            ) as r:  # fmt: skip
                self.status = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line.removeprefix("data: "))
                        self.first.set()
        except Exception as exc:  # kept for the assertion, not swallowed
            self.error = exc
        finally:
            self.first.set()


class Call(threading.Thread):
    """One JSON request on a thread."""

    def __init__(self, url: str, max_tokens: int):
        super().__init__(daemon=True)
        self.url, self.max_tokens = url, max_tokens
        self.response: httpx.Response | None = None

    def run(self) -> None:
        self.response = httpx.post(
            f"{self.url}/v1/chat/completions", json=body(self.max_tokens, False), timeout=60
        )


def running_sequences(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    found = re.search(r"^chatd_running_sequences\{[^}]*\} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False  # accepted, then dropped: not refused yet
    return False


def test_sigterm_drains_then_ends_what_still_runs(server):
    url = server.url
    long_stream, short_stream = Stream(url, LONG), Stream(url, SHORT)
    long_call = Call(url, LONG)
    for client in (long_stream, short_stream, long_call):
        client.start()
    assert long_stream.first.wait(60) and short_stream.first.wait(60)
    wait_for(lambda: running_sequences(url) == 3, "three running sequences")

    server.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: refused(url), "new connections to be refused", timeout=SHUTDOWN_TIMEOUT)
    assert server.proc.wait(timeout=SHUTDOWN_TIMEOUT + 30) == 0
    for client in (long_stream, short_stream, long_call):
        client.join(timeout=30)
        assert not client.is_alive()

    # The short stream finished within the timeout: whole, with [DONE].
    assert short_stream.error is None and short_stream.status == 200
    assert short_stream.events[-1] == "[DONE]"
    assert json.loads(short_stream.events[-2])["choices"][0]["finish_reason"] == "length"
    # The long one was cut at the timeout: an error event, no [DONE].
    assert long_stream.error is None and long_stream.status == 200
    assert json.loads(long_stream.events[-1]) == {
        "error": "the server is shutting down",
        "error_type": "shutdown",
    }
    assert "[DONE]" not in long_stream.events
    assert any('"content"' in e for e in long_stream.events[:-1])
    # The JSON answer still running at the timeout: a 503 with the HF body.
    assert long_call.response.status_code == 503
    assert long_call.response.json() == {
        "error": "the server is shutting down",
        "error_type": "shutdown",
    }
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert '" 500' not in log, log[-3000:]


def test_sigterm_when_idle_exits_at_once_and_cleanly(server):
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    assert "Traceback" not in server.log.read_text()
