"""The served models by id, and their states: (downloading ->) available -> loading -> ready |
failed.

A model loads in a background thread on first use (the default one at start). A request
naming a Hugging Face Hub id (`org/name[:QUANT]`) that is not on disk starts its download
first (--pull, --pull-allow, models/pull.py), checked against the budget and the free disk
before any byte; one download serves every request that asks meanwhile. Until the model is
ready a request gets 503 with an `estimated_time` worked out from the measured download rate
and load progress, or, with `x-wait-for-model: true`, waits for it. Loading makes room first:
the least recently used idle model is unloaded while --max-loaded-models or --memory-budget
would be exceeded; --keep-alive unloads models idle for longer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from chatd.config import Settings
from chatd.models import pull
from chatd.models.errors import ModelFailed, ModelLoading, ModelNotFound, NoRoom
from chatd.models.hub import HubRef, is_hub_id
from chatd.models.loader import LoadedModel, load_model
from chatd.models.sources import ModelSource, from_hf_cache
from chatd.protocol.echo import echo

log = logging.getLogger(__name__)

# Names clients send when they mean "whatever this server serves" (CLIENTS.md).
DEFAULT_NAMES = {"", "dummy", "tgi"}


# A first guess at load speed, for the estimated_time of a model still downloading: llama.cpp
# maps a GGUF in well under a second; transformers takes longer (dequantising, float32).
LOAD_BYTES_PER_SECOND = 200e6


class ModelState(StrEnum):
    DOWNLOADING = "downloading"
    AVAILABLE = "available"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(eq=False)
class ModelEntry:
    source: ModelSource
    aliases: set[str] = field(default_factory=set)
    state: ModelState = ModelState.AVAILABLE
    progress: float = 0.0
    load_started: float = 0.0
    error: str | None = None
    failed_at: float = 0.0
    loaded: LoadedModel | None = None
    last_used: float = 0.0
    leases: int = 0  # requests holding the model; it is never unloaded under them
    download: Download | None = None  # set while (and after) it is pulled from the Hub

    @property
    def id(self) -> str:
        return self.source.id

    @property
    def idle(self) -> bool:
        return self.leases == 0 and self.state is ModelState.READY

    @property
    def footprint(self) -> int:
        """Bytes it takes (or will take) in memory, for --memory-budget: what the runner
        holds once loaded (weights and KV cache; a dequantised GGUF is several times its
        file), the file's size before."""
        if self.loaded:
            return self.loaded.engine.runner.memory_bytes
        return self.download.total if self.download else self.source.size

    def not_ready(self, retry_after: float) -> ModelLoading | ModelFailed:
        """Why it cannot answer now: the same for a request and for /health."""
        if self.state is ModelState.FAILED:
            wait = max(0.0, retry_after - (time.monotonic() - self.failed_at))
            return ModelFailed(f"Model {self.id} failed to load: {self.error}", round(wait, 1))
        return ModelLoading(f"Model {self.id} is currently loading", self.estimated_time())

    def estimated_time(self) -> float:
        """Seconds left, from the elapsed time and the fraction loaded so far (downloading:
        the bytes left at the measured rate, plus the load)."""
        if self.state is ModelState.DOWNLOADING and self.download:
            return round(self.download.seconds_left() + self.footprint / LOAD_BYTES_PER_SECOND, 1)
        elapsed = time.monotonic() - self.load_started
        if self.progress <= 0.01:
            return round(max(1.0, elapsed), 1)
        return round(max(0.1, elapsed * (1 - self.progress) / self.progress), 1)


@dataclass(eq=False)
class Download:
    """A pull under way (or done): its plan and the bytes on disk so far."""

    plan: pull.PullPlan
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: bool = False

    @property
    def total(self) -> int:
        return self.plan.total

    def seconds_left(self) -> float:
        """The bytes left at the rate measured so far (a guess of 10 MB/s before any byte)."""
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if self.done and elapsed > 0.5 else 10e6
        return max(1.0, (self.total - self.done) / rate)


class Registry:
    def __init__(self, settings: Settings, sources: list[ModelSource]):
        self.settings = settings
        self.entries = {s.id: ModelEntry(s) for s in sources}
        self.default = self.entries[sources[0].id]
        # --alias NAME names the default; --alias NAME=ID any model, a Hub id too.
        self.alias_targets = dict(a.split("=", 1) for a in settings.aliases if "=" in a)
        self.default.aliases |= {a for a in settings.aliases if "=" not in a}
        for alias, target in self.alias_targets.items():
            if target in self.entries:
                self.entries[target].aliases.add(alias)
        self.listeners: list[Callable[[ModelEntry], None]] = []  # progress and state changes
        self._lookups: dict[str, asyncio.Future[ModelEntry]] = {}  # Hub ids being looked up

    def find(self, name: str | None) -> ModelEntry | None:
        """The entry of a model this server knows by that name (id or alias); the default
        for none, `dummy` or `tgi`."""
        if name is None or name in DEFAULT_NAMES:
            return self.default
        target = self.alias_targets.get(name, name)
        for entry in self.entries.values():
            if target == entry.id or name in entry.aliases:
                return entry
        return None

    async def lookup(self, name: str | None) -> ModelEntry:
        """`find`, else a Hub id found in the local Hugging Face cache or pulled. The cache
        and the Hub's metadata are read in a worker thread, never on the event loop, and
        requests for one model at once share one lookup (and so one download)."""
        if (entry := self.find(name)) is not None:
            return entry
        target = self.alias_targets.get(name, name)
        if not is_hub_id(target):
            raise ModelNotFound(f"Model {echo(name)} is not served here")
        ref = HubRef.parse(target)
        if ref.id != target:  # the same model, its quantisation spelt in another case
            return await self.lookup(ref.id)
        if (pending := self._lookups.get(ref.id)) is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self._open, ref))
            self._lookups[ref.id] = pending
            pending.add_done_callback(lambda _: self._lookups.pop(ref.id, None))
        entry = await asyncio.shield(pending)
        if ref.id not in self.entries:  # the first of the requests that shared the lookup
            entry.aliases |= {alias for alias, to in self.alias_targets.items() if to == target}
            self.entries[ref.id] = entry
            if entry.download:
                self._download(entry)
        return self.entries[ref.id]

    def _open(self, ref: HubRef) -> ModelEntry:
        """A worker thread: the model from the local Hugging Face cache, else an entry to pull
        (one listing and one HEAD at the Hub; raises if it may not or cannot be pulled)."""
        path = pull.local_path(ref)
        source = ModelSource(ref.id, path) if path else from_hf_cache(ref.id)
        if source:
            return ModelEntry(source)
        s = self.settings
        pull.may_pull(ref.repo_id, s.pull, s.pull_allow_patterns)
        plan = pull.plan_pull(ref)
        pull.check_room(plan, s.memory_budget)
        return ModelEntry(ModelSource(ref.id, pull.cache_root()), download=Download(plan))

    def _download(self, entry: ModelEntry) -> None:
        entry.state, entry.error = ModelState.DOWNLOADING, None
        entry.download = Download(entry.download.plan)
        self._notify(entry)
        threading.Thread(target=self._fetch, args=(entry,), daemon=True).start()

    def _fetch(self, entry: ModelEntry) -> None:
        def progress(done: int) -> None:
            entry.download.done = done
            self._notify(entry)

        try:
            path = pull.download(entry.download.plan, progress)
        except Exception as exc:
            log.exception("model %s failed to download", entry.id)
            entry.state, entry.error = ModelState.FAILED, f"download failed: {exc}"
            entry.failed_at = time.monotonic()
            self._notify(entry)
            return
        entry.source, entry.download.finished = ModelSource(entry.id, path), True
        entry.state = ModelState.AVAILABLE
        log.info("downloaded %s in %.1f s", entry.id, time.monotonic() - entry.download.started)
        try:
            self.start_loading(entry)
        except NoRoom:
            self._notify(entry)  # it loads when a request asks and room is made

    async def acquire(self, entry: ModelEntry, wait: bool = False) -> LoadedModel:
        """The entry's ready model, leased until `release`; starts its load if needed."""
        deadline = time.monotonic() + self.settings.wait_timeout
        while True:
            if entry.state is ModelState.READY and entry.loaded:
                entry.leases += 1
                entry.last_used = time.monotonic()
                return entry.loaded
            if entry.state is ModelState.FAILED:
                if time.monotonic() - entry.failed_at < self.settings.load_retry:
                    raise entry.not_ready(self.settings.load_retry)
                self._retry(entry)  # the back-off has passed: try again
            elif entry.state is ModelState.AVAILABLE:
                self.start_loading(entry)
            if not wait or time.monotonic() > deadline:
                raise entry.not_ready(self.settings.load_retry)
            await asyncio.sleep(0.1)

    def _retry(self, entry: ModelEntry) -> None:
        """A failed download resumes (files already whole are kept); a failed load loads."""
        if entry.download and not entry.download.finished:
            self._download(entry)
        else:
            self.start_loading(entry)

    def release(self, entry: ModelEntry) -> None:
        entry.leases -= 1
        entry.last_used = time.monotonic()

    def start_loading(self, entry: ModelEntry) -> None:
        self._make_room(entry)
        entry.state, entry.progress, entry.error = ModelState.LOADING, 0.0, None
        entry.load_started = time.monotonic()
        self._notify(entry)
        threading.Thread(target=self._load, args=(entry,), daemon=True).start()

    def unload(self, entry: ModelEntry) -> None:
        loaded, entry.loaded = entry.loaded, None
        entry.state, entry.progress = ModelState.AVAILABLE, 0.0
        self._notify(entry)
        if loaded:
            loaded.engine.close()
        log.info("unloaded %s", entry.id)

    def unload_idle(self, older_than: float) -> None:
        """--keep-alive: unload models nobody used for `older_than` seconds."""
        now = time.monotonic()
        for entry in list(self.entries.values()):
            if entry.idle and now - entry.last_used > older_than:
                self.unload(entry)

    def close(self) -> None:
        for entry in list(self.entries.values()):
            if entry.loaded:
                self.unload(entry)

    def _make_room(self, incoming: ModelEntry) -> None:
        s = self.settings
        if s.memory_budget and incoming.footprint > s.memory_budget:
            raise NoRoom(
                f"Model {incoming.id} ({incoming.footprint} bytes) does not fit in the "
                f"memory budget of {s.memory_budget} bytes",
                retry_after=None,
            )
        while self._too_full(incoming):
            idle = [e for e in self.entries.values() if e.idle and e is not incoming]
            if not idle:
                raise NoRoom(
                    f"No idle model can be unloaded to make room for {incoming.id}", retry_after=5
                )
            self.unload(min(idle, key=lambda e: e.last_used))

    def _too_full(self, incoming: ModelEntry) -> bool:
        s = self.settings
        resident = [
            e for e in self.entries.values()
            if e.state in (ModelState.READY, ModelState.LOADING) and e is not incoming
        ]  # fmt: skip
        if s.max_loaded_models and len(resident) + 1 > s.max_loaded_models:
            return True
        used = sum(e.footprint for e in resident) + incoming.footprint
        return bool(s.memory_budget) and used > s.memory_budget

    def _load(self, entry: ModelEntry) -> None:
        def progress(value: float) -> None:
            entry.progress = value
            self._notify(entry)

        try:
            entry.loaded = load_model(entry.source, self.settings, progress)
            entry.state, entry.last_used = ModelState.READY, time.monotonic()
            log.info("model %s ready in %.1f s", entry.id, time.monotonic() - entry.load_started)
        except Exception as exc:
            log.exception("model %s failed to load", entry.id)
            entry.state, entry.error, entry.failed_at = (
                ModelState.FAILED,
                str(exc),
                time.monotonic(),
            )
        entry.progress = 1.0
        self._notify(entry)

    def _notify(self, entry: ModelEntry) -> None:
        for listener in self.listeners:
            listener(entry)
