"""Turn a model source into a running engine: the runner for its format, its chat template."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from chatd.chat.template import ChatTemplate
from chatd.config import Settings
from chatd.engine.engine import Engine
from chatd.models.sources import ModelSource, materialise


@dataclass
class LoadedModel:
    id: str
    engine: Engine
    template: ChatTemplate


def load_model(
    source: ModelSource, settings: Settings, progress: Callable[[float], None]
) -> LoadedModel:
    path = materialise(source)
    if path.is_dir() or path.suffix != ".gguf":
        raise ValueError(
            f"{source.id}: only GGUF files are served so far ({path} is a Hugging Face folder; "
            "the transformers runner will load those)"
        )
    from chatd.engine.runners.llamacpp import LlamaCppRunner

    runner = LlamaCppRunner(
        str(path),
        n_slots=settings.parallel,
        n_ctx=settings.ctx,
        n_threads=settings.threads,
        max_batch_tokens=settings.batch_tokens,
        progress=progress,
    )
    tok = runner.tokenizer
    template = ChatTemplate(tok.chat_template, tok.bos_token, tok.eos_token)
    return LoadedModel(source.id, Engine(runner), template)
