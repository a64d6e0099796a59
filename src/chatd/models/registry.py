"""The served models by id, and their states: available -> loading -> ready | failed.

A model loads in a background thread; until it is ready a request gets 503 with an
`estimated_time` worked out from the load's measured progress.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from chatd.chat.template import ChatTemplate
from chatd.config import Settings
from chatd.engine.engine import Engine
from chatd.engine.runners.llamacpp import LlamaCppRunner
from chatd.models.sources import ModelSource
from chatd.server.errors import ChatdError

log = logging.getLogger(__name__)

# Names clients send when they mean "whatever this server serves" (CLIENTS.md).
DEFAULT_NAMES = {"", "dummy", "tgi"}


class ModelState(StrEnum):
    AVAILABLE = "available"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class LoadedModel:
    id: str
    engine: Engine
    template: ChatTemplate


@dataclass
class ModelEntry:
    source: ModelSource
    aliases: set[str] = field(default_factory=set)
    state: ModelState = ModelState.AVAILABLE
    progress: float = 0.0
    load_started: float = 0.0
    error: str | None = None
    loaded: LoadedModel | None = None

    @property
    def id(self) -> str:
        return self.source.id

    def estimated_time(self) -> float:
        """Seconds left, from the elapsed time and the fraction loaded so far."""
        elapsed = time.monotonic() - self.load_started
        if self.progress <= 0.01:
            return round(max(1.0, elapsed), 1)
        return round(max(0.1, elapsed * (1 - self.progress) / self.progress), 1)


class Registry:
    def __init__(self, settings: Settings, source: ModelSource):
        self.settings = settings
        self.default = ModelEntry(source, aliases=set(settings.aliases))
        self.entries = {source.id: self.default}
        self.on_progress: Callable[[ModelEntry], None] | None = None

    def load_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self._load, args=(self.default,), daemon=True)
        self.default.state, self.default.load_started = ModelState.LOADING, time.monotonic()
        thread.start()
        return thread

    def find(self, name: str | None) -> ModelEntry:
        """The entry a request names (by id or alias); the default for none, dummy or tgi."""
        if name is None or name in DEFAULT_NAMES:
            return self.default
        for entry in self.entries.values():
            if name == entry.id or name in entry.aliases:
                return entry
        raise ChatdError(404, f"Model {name} is not served here", "not_found")

    def ready(self, name: str | None) -> LoadedModel:
        entry = self.find(name)
        if entry.state is ModelState.READY and entry.loaded:
            return entry.loaded
        if entry.state is ModelState.FAILED:
            raise ChatdError(500, f"Model {entry.id} failed to load: {entry.error}", "generation")
        raise ChatdError(
            503,
            f"Model {entry.id} is currently loading",
            "loading",
            headers={"x-should-retry": "false"},
            estimated_time=entry.estimated_time(),
        )

    def close(self) -> None:
        for entry in self.entries.values():
            if entry.loaded:
                entry.loaded.engine.close()
                entry.loaded = None

    def _load(self, entry: ModelEntry) -> None:
        s = self.settings

        def progress(value: float) -> None:
            entry.progress = value
            if self.on_progress:
                self.on_progress(entry)

        try:
            runner = LlamaCppRunner(
                str(entry.source.path),
                n_slots=s.parallel,
                n_ctx=s.ctx,
                n_threads=s.threads,
                max_batch_tokens=s.batch_tokens,
                progress=progress,
            )
            tok = runner.tokenizer
            template = ChatTemplate(tok.chat_template, tok.bos_token, tok.eos_token)
            entry.loaded = LoadedModel(entry.id, Engine(runner), template)
            entry.state = ModelState.READY
            log.info("model %s ready in %.1f s", entry.id, time.monotonic() - entry.load_started)
        except Exception as exc:
            log.exception("model %s failed to load", entry.id)
            entry.state, entry.error = ModelState.FAILED, str(exc)
        progress(1.0)
