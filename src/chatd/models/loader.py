"""Turn a model source into a running engine: the runner for its format, its chat template."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chatd.chat.template import ChatTemplate
from chatd.config import Settings
from chatd.engine.engine import Engine
from chatd.engine.runners.base import Runner
from chatd.engine.speculative import Speculation, measure_position_cost
from chatd.models.sources import ModelSource, materialise

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    id: str
    engine: Engine
    template: ChatTemplate


def load_model(
    source: ModelSource, settings: Settings, progress: Callable[[float], None]
) -> LoadedModel:
    runner = open_runner(materialise(source), settings, progress)
    tok = runner.tokenizer
    template = ChatTemplate(tok.chat_template, tok.bos_token, tok.eos_token)
    speculation = None
    if settings.speculative == "ngram":
        cost = settings.speculative_cost
        speculation = Speculation(measure_position_cost(runner) if cost is None else cost)
        log.info("speculative: a drafted position costs %.2f of a step", speculation.position_cost)
    engine = Engine(runner, prefix_cache_bytes=settings.prefix_cache_bytes, speculation=speculation)
    return LoadedModel(source.id, engine, template)


def open_runner(path: Path, settings: Settings, progress: Callable[[float], None]) -> Runner:
    """llama.cpp for GGUF files, transformers for folders; with `runner: auto`, a GGUF that
    llama.cpp cannot read is dequantised by transformers instead."""
    kind = settings.runner
    if kind == "auto":
        kind = "llamacpp" if path.suffix == ".gguf" and path.is_file() else "transformers"
    if kind == "transformers":
        return _transformers(path, settings, progress)
    try:
        return _llamacpp(path, settings, progress)
    except RuntimeError as exc:
        if settings.runner != "auto":
            raise
        log.warning("%s; trying transformers (dequantising the GGUF)", exc)
        try:
            return _transformers(path, settings, progress)
        except Exception as fallback:
            raise RuntimeError(f"{exc}; transformers could not read it either: {fallback}") from exc


def _llamacpp(path: Path, settings: Settings, progress) -> Runner:
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder: llama.cpp reads GGUF files (use the transformers runner)"
        )
    from chatd.engine.runners.llamacpp import LlamaCppRunner

    return LlamaCppRunner(str(path), **_shared(settings, progress))


def _transformers(path: Path, settings: Settings, progress) -> Runner:
    from chatd.engine.runners.transformers import TransformersRunner  # imports torch: slow

    return TransformersRunner(
        path, device=settings.device, dtype=settings.dtype, **_shared(settings, progress)
    )


def _shared(settings: Settings, progress) -> dict:
    """What every runner takes: its slots, their context, threads, batch size, progress."""
    return {
        "n_slots": settings.parallel,
        "n_ctx": settings.ctx,
        "n_threads": settings.threads,
        "max_batch_tokens": settings.batch_tokens,
        "progress": progress,
    }
