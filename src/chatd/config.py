"""One Settings object: every user-facing setting has one name here, one CLI flag and one
environment variable (CHATD_<NAME>), wired in cli.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chatd.chat.images import ImageLimits

RUNNERS = ("auto", "llamacpp", "transformers")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    # Models: GGUF paths or ID=PATH (repeatable); none serves the packaged default. The first
    # is the default model, loaded at start; the others load on first use.
    models: list[str] = field(default_factory=list)
    models_dir: Path | None = None  # GGUF files and Hugging Face folders found there
    aliases: list[str] = field(default_factory=list)  # more names for the default model
    parallel: int = 8  # sequences decoded together (KV cache slots), per model
    ctx: int = 4096  # tokens per sequence, prompt and answer together
    threads: int | None = None  # CPU threads for each model; None = all cores
    batch_tokens: int = 512  # tokens one forward may take (decode tokens plus prompt chunks)
    # Which runner loads a model: auto = llama.cpp for GGUF files (transformers, dequantising,
    # if llama.cpp cannot read one), transformers for Hugging Face folders.
    runner: str = "auto"  # auto | llamacpp | transformers
    device: str = "auto"  # the transformers runner's: auto (CUDA when present) | cpu | cuda
    dtype: str = "auto"  # its weights' type: auto (bfloat16 on CUDA, float32 on the CPU) | ...
    max_n: int = 16  # largest `n` (choices per request)
    # Residency: 0 means no limit.
    max_loaded_models: int = 0
    memory_budget: int = 0  # bytes of model files loaded at once
    keep_alive: float = 0  # seconds idle before a model is unloaded
    wait_timeout: float = 300  # longest x-wait-for-model wait, seconds
    load_retry: float = 30  # seconds before a failed load is tried again
    # Backpressure: requests beyond max_queue waiting for a model's slots get 429.
    max_queue: int = 256
    request_timeout: float = 0  # seconds one request may generate; 0 = no limit
    # Response cache (x-use-cache): sqlite under cache_dir by default, or memory, or redis://.
    cache_url: str | None = None
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "chatd")
    cache_max_bytes: int = 256 * 2**20
    # Auth: with keys set, the API needs `authorization: Bearer <key>`.
    api_keys: list[str] = field(default_factory=list)
    api_key_file: Path | None = None
    log_level: str = "info"
    # Image URLs in messages: fetched under these limits; private addresses refused unless
    # allowed (all of them, or the hosts listed).
    image_max_bytes: int = 20 * 2**20
    image_max_pixels: int = 4096 * 4096
    image_timeout: float = 10.0
    image_max_redirects: int = 3
    max_images: int = 16  # per request
    allow_private_images: bool = False
    image_allow_hosts: list[str] = field(default_factory=list)

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(
            max_bytes=self.image_max_bytes,
            max_pixels=self.image_max_pixels,
            timeout=self.image_timeout,
            max_redirects=self.image_max_redirects,
            max_images=self.max_images,
            allow_private=self.allow_private_images,
            allow_hosts=frozenset(self.image_allow_hosts),  # normalised where compared
        )
