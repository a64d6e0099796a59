"""The response cache failing under a running chatd: a Redis server that goes away and comes
back, an SQLite file on a full disk. Requests are still served (the cache is bypassed, the
failure logged once, not per request), and the cache works again once its backend does."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, free_port, redis_package

COOLDOWN_S = 5  # SafeCache leaves a failed backend alone this long


def ask(url: str, content: str, stream: bool = False) -> httpx.Response:
    """A deterministic (so cacheable) request; the content picks its cache key."""
    body = {"messages": [{"role": "user", "content": content}], "temperature": 0}
    body.update(max_tokens=2, stream=stream)
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    if stream:
        assert r.text.rstrip().endswith("data: [DONE]"), r.text
    return r


def wait_for_hit(url: str, content: str, timeout: float = COOLDOWN_S + 30) -> None:
    """Asks until the cache answers (it is tried again once its cooldown has passed)."""
    deadline = time.monotonic() + timeout
    while ask(url, content).headers.get("x-cache") != "hit":
        assert time.monotonic() < deadline, "the cache never came back"
        time.sleep(0.5)


def cache_warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if "WARNING" in line and "response cache" in line]


def serve_through_an_outage(url: str, log: Path) -> None:
    """While the backend is down: every request served, a miss, and one warning."""
    for i in range(6):
        r = ask(url, f"during the outage {i}", stream=i % 2 == 1)
        assert r.headers["x-cache"] == "miss"
    warnings = cache_warnings(log.read_text())
    assert len(warnings) == 1, warnings
    assert "Traceback" not in log.read_text()


def recovers(url: str, log: Path) -> None:
    """Once the backend is back: new answers are stored again, and that is logged, once."""
    assert ask(url, "after").status_code == 200
    wait_for_hit(url, "after")
    assert "works again" in log.read_text()
    assert len(cache_warnings(log.read_text())) == 1


# -- Redis going away mid-run ---------------------------------------------------------------------


class RedisServer:
    """A redis-server of this test's own, on a fixed port, to stop and start again."""

    def __init__(self, folder: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not on PATH")
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis_package().Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis_package().ConnectionError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "no redis"
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def test_redis_going_away_costs_the_cache_only(tmp_path):
    redis = RedisServer(tmp_path)
    redis.start()
    server = Server("--parallel", "2", "--ctx", "1024", "--cache-url", redis.url)
    try:
        server.wait_ready()
        url = server.url
        assert ask(url, "before").headers["x-cache"] == "miss"
        assert ask(url, "before").headers["x-cache"] == "hit"

        redis.stop()
        serve_through_an_outage(url, server.log)

        redis.start()  # empty: what was cached before is gone
        recovers(url, server.log)
    finally:
        server.stop()
        redis.stop()


# -- SQLite on a full disk ------------------------------------------------------------------------


class PipedServer(Server):
    """A chatd whose output reaches its log through a pipe: a file-size limit set on the
    process (a full disk) must not cut its own log."""

    def __init__(self, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"chatd-test-{self.port}.log"
        self._log_file = self.log.open("w")
        cmd = self.command(*args)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._copier = threading.Thread(target=self._copy, daemon=True)
        self._copier.start()

    def _copy(self) -> None:
        for line in self.proc.stdout:
            self._log_file.write(line.decode(errors="replace"))
            self._log_file.flush()

    def stop(self) -> None:
        self.end_process()
        self._copier.join(timeout=15)  # the pipe's last lines, before the log is closed
        self._log_file.close()


def fill_the_disk(pid: int, folder: Path) -> None:
    """No file of the process may grow past the largest of the cache's files now (EFBIG on
    the write that would: SQLite reports a full disk)."""
    largest = max(p.stat().st_size for p in folder.iterdir())
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (largest, resource.RLIM_INFINITY))


def test_sqlite_on_a_full_disk_costs_the_cache_only(tmp_path):
    server = PipedServer("--parallel", "2", "--ctx", "1024", "--cache-dir", str(tmp_path))
    try:
        server.wait_ready()
        url = server.url
        assert ask(url, "before").headers["x-cache"] == "miss"
        assert ask(url, "before").headers["x-cache"] == "hit"

        fill_the_disk(server.proc.pid, tmp_path)
        serve_through_an_outage(url, server.log)
        # What is stored can still be read: a full disk costs the new entries only.
        assert ask(url, "before").headers["x-cache"] == "hit"

        unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, unlimited)
        recovers(url, server.log)
    finally:
        server.stop()
