"""models/registry.py with a fake loader: states, names, leases, LRU unloading under
--max-loaded-models and --memory-budget, estimated_time and the retry of a failed load."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chatd.config import Settings
from chatd.models import registry as registry_module
from chatd.models.errors import ModelFailed, ModelLoading, ModelNotFound, NoRoom
from chatd.models.registry import ModelState, Registry
from chatd.models.sources import ModelSource
from chatd.server.errors import as_chatd

MB = 2**20


@dataclass
class FakeRunner:
    memory_bytes: int


@dataclass
class FakeEngine:
    runner: FakeRunner
    closed: bool = False

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeLoaded:
    id: str
    engine: FakeEngine


@dataclass
class Loader:
    """Loads a model when the test lets it (`finish`), failing those named in `broken`."""

    memory: int = MB
    broken: set[str] = field(default_factory=set)
    gates: dict[str, threading.Event] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)

    def __call__(self, source: ModelSource, settings: Settings, progress) -> FakeLoaded:
        progress(0.5)
        if source.id in self.held:
            self.gates.setdefault(source.id, threading.Event()).wait(30)
        if source.id in self.broken:
            raise RuntimeError(f"could not load {source.id}")
        return FakeLoaded(source.id, FakeEngine(FakeRunner(self.memory)))


@pytest.fixture
def loader(monkeypatch) -> Loader:
    fake = Loader()
    monkeypatch.setattr(registry_module, "load_model", fake)
    return fake


def sources(tmp_path: Path, *ids: str, size: int = MB) -> list[ModelSource]:
    out = []
    for model_id in ids:
        path = tmp_path / f"{model_id}.gguf"
        path.write_bytes(b"\0" * size)
        out.append(ModelSource(model_id, path))
    return out


def make(tmp_path: Path, *ids: str, **settings) -> Registry:
    return Registry(Settings(**settings), sources(tmp_path, *ids))


def settled(registry: Registry, model_id: str) -> threading.Event:
    """Set once the model's load has ended, ready or failed."""
    done = threading.Event()

    def listen(entry) -> None:
        if entry.id == model_id and entry.state in (ModelState.READY, ModelState.FAILED):
            done.set()

    registry.listeners.append(listen)
    return done


def load(registry: Registry, model_id: str) -> None:
    """Start the model's load and wait for its end."""
    done = settled(registry, model_id)
    registry.start_loading(registry.entries[model_id])
    assert done.wait(30)


def acquire(registry: Registry, model_id: str, wait: bool = False):
    return asyncio.run(registry.acquire(registry.entries[model_id], wait=wait))


def test_find_by_id_alias_and_the_default_names(tmp_path, loader):
    registry = make(tmp_path, "a", "b", aliases=["gpt-x"])
    a, b = registry.entries["a"], registry.entries["b"]
    for name in (None, "", "dummy", "tgi", "gpt-x", "a"):
        assert registry.find(name) is a
    assert registry.find("b") is b
    assert registry.find("nope") is None
    with pytest.raises(ModelNotFound) as raised:
        asyncio.run(registry.lookup("nope"))
    answer = as_chatd(raised.value)
    assert (answer.status, answer.error_type) == (404, "not_found")


def test_a_first_request_starts_the_load_and_gets_503_with_an_estimate(tmp_path, loader):
    registry = make(tmp_path, "a")
    entry = registry.entries["a"]
    assert entry.state is ModelState.AVAILABLE
    loader.held.add("a")
    done = settled(registry, "a")
    with pytest.raises(ModelLoading) as raised:
        acquire(registry, "a")
    assert raised.value.estimated_time > 0
    err = as_chatd(raised.value)
    assert (err.status, err.error_type) == (503, "loading")
    assert err.headers == {"x-should-retry": "false"} and err.extra["estimated_time"] > 0
    assert entry.state is ModelState.LOADING
    loader.gates["a"].set()
    assert done.wait(30) and entry.state is ModelState.READY and entry.progress == 1.0
    loaded = acquire(registry, "a")
    assert loaded.id == "a" and entry.leases == 1
    registry.release(entry)
    assert entry.leases == 0 and entry.idle


def test_waiting_for_the_model_returns_it_once_loaded(tmp_path, loader):
    registry = make(tmp_path, "a")
    loader.held.add("a")

    async def wait_and_let_it_load():
        waiter = asyncio.create_task(registry.acquire(registry.entries["a"], wait=True))
        await asyncio.sleep(0)  # the waiter has started the load
        loader.gates.setdefault("a", threading.Event()).set()
        return await waiter

    assert asyncio.run(wait_and_let_it_load()).id == "a"


def test_waiting_gives_up_after_the_wait_timeout(tmp_path, loader):
    registry = make(tmp_path, "a", wait_timeout=0.2)
    loader.held.add("a")
    with pytest.raises(ModelLoading):
        acquire(registry, "a", wait=True)
    assert registry.entries["a"].state is ModelState.LOADING
    loader.gates["a"].set()


def test_estimated_time_from_the_progress_so_far(tmp_path, loader):
    entry = make(tmp_path, "a").entries["a"]
    entry.load_started = time.monotonic() - 10
    entry.progress = 0.0
    assert entry.estimated_time() >= 10  # no progress yet: at least the time so far
    entry.progress = 0.5
    assert entry.estimated_time() == pytest.approx(10, abs=0.5)  # as long again
    entry.progress = 0.8
    assert entry.estimated_time() == pytest.approx(2.5, abs=0.5)


def test_a_failed_load_reports_its_cause_then_is_retried_after_the_back_off(tmp_path, loader):
    loader.broken.add("a")
    registry = make(tmp_path, "a", load_retry=3600)
    load(registry, "a")
    entry = registry.entries["a"]
    assert entry.state is ModelState.FAILED and "could not load a" in entry.error
    with pytest.raises(ModelFailed) as raised:
        acquire(registry, "a")
    assert "failed to load: could not load a" in str(raised.value)
    assert 3500 < raised.value.retry_after <= 3600
    answer = as_chatd(raised.value)
    assert (answer.status, answer.error_type) == (503, "load_failed")
    assert int(answer.headers["retry-after"]) == pytest.approx(raised.value.retry_after, abs=1)
    registry.settings.load_retry = 0  # the back-off has passed
    loader.broken.clear()
    done = settled(registry, "a")
    with pytest.raises(ModelLoading):
        acquire(registry, "a")  # loading again
    assert done.wait(30) and entry.state is ModelState.READY and entry.error is None


def test_max_loaded_models_unloads_the_least_recently_used_idle_model(tmp_path, loader):
    registry = make(tmp_path, "a", "b", "c", max_loaded_models=2)
    for model_id in ("a", "b"):
        load(registry, model_id)
    acquire(registry, "a")  # a is now the most recently used
    registry.release(registry.entries["a"])
    b_engine = registry.entries["b"].loaded.engine
    load(registry, "c")
    states = {i: e.state for i, e in registry.entries.items()}
    assert states == {"a": ModelState.READY, "b": ModelState.AVAILABLE, "c": ModelState.READY}
    assert b_engine.closed and registry.entries["b"].loaded is None


def test_a_model_in_use_is_never_unloaded(tmp_path, loader):
    registry = make(tmp_path, "a", "b", max_loaded_models=1)
    load(registry, "a")
    acquire(registry, "a")  # leased
    with pytest.raises(NoRoom) as raised:
        registry.start_loading(registry.entries["b"])
    answer = as_chatd(raised.value)
    assert (answer.status, answer.error_type) == (503, "overloaded")
    assert answer.headers["retry-after"] == "5"
    assert registry.entries["a"].state is ModelState.READY
    registry.release(registry.entries["a"])
    load(registry, "b")  # idle now: a makes room
    assert registry.entries["a"].state is ModelState.AVAILABLE


def test_memory_budget_counts_what_loaded_models_hold(tmp_path, loader):
    # Files of 1 MB that hold 3 MB once loaded: two fit the budget by their files, not loaded.
    loader.memory = 3 * MB
    registry = make(tmp_path, "a", "b", memory_budget=int(3.5 * MB))
    load(registry, "a")
    assert registry.entries["a"].footprint == 3 * MB
    assert registry.entries["b"].footprint == MB  # not loaded: its file's size
    load(registry, "b")
    assert registry.entries["a"].state is ModelState.AVAILABLE


def test_a_model_larger_than_the_budget_is_refused(tmp_path, loader):
    registry = make(tmp_path, "a", memory_budget=MB // 2)
    with pytest.raises(NoRoom, match="does not fit") as raised:
        registry.start_loading(registry.entries["a"])
    assert raised.value.retry_after is None  # it never will
    assert "retry-after" not in as_chatd(raised.value).headers
    assert registry.entries["a"].state is ModelState.AVAILABLE


def test_keep_alive_unloads_only_models_idle_long_enough(tmp_path, loader):
    registry = make(tmp_path, "a", "b")
    load(registry, "a")
    load(registry, "b")
    registry.entries["a"].last_used -= 100
    registry.unload_idle(older_than=50)
    assert registry.entries["a"].state is ModelState.AVAILABLE
    assert registry.entries["b"].state is ModelState.READY


def test_listeners_see_every_state(tmp_path, loader):
    registry = make(tmp_path, "a")
    seen: list[ModelState] = []
    registry.listeners.append(lambda entry: seen.append(entry.state))
    load(registry, "a")
    registry.close()
    assert seen[0] is ModelState.LOADING
    assert ModelState.READY in seen and seen[-1] is ModelState.AVAILABLE
