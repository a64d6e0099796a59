"""One Settings object: every user-facing setting has one name here, one CLI flag and one
environment variable (CHATD_<NAME>), wired in cli.py."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    model: str | None = None  # a GGUF path, or ID=PATH; None serves the packaged default
    aliases: list[str] = field(default_factory=list)  # more names that mean the served model
    parallel: int = 8  # sequences decoded together (KV cache slots)
    ctx: int = 4096  # tokens per sequence, prompt and answer together
    threads: int | None = None  # CPU threads for the model; None = all cores
    batch_tokens: int = 512  # tokens one forward may take (decode tokens plus prompt chunks)
    max_n: int = 16  # largest `n` (choices per request)
    log_level: str = "info"
