"""`chatd serve | chat | models`. Each option also reads its CHATD_* environment variable."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from chatd.config import DEVICES, DTYPES, RUNNERS, Settings

app = typer.Typer(help="chatd: a self-hosted chat-completion server.", no_args_is_help=True)
console = Console(stderr=True)
DEFAULTS = Settings()


def _opt(help: str, env: str, **kw):
    return typer.Option(help=help, envvar=f"CHATD_{env}", **kw)


def _one_of(choices: tuple[str, ...]):
    def check(value: str) -> str:
        if value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


@app.command()
def serve(
    model: Annotated[
        list[str],
        _opt("GGUF path, packaged id or ID=PATH (repeatable; the first is the default)", "MODEL"),
    ] = [],  # noqa: B006
    models_dir: Annotated[
        Path | None, _opt("serve the GGUF files and HF folders in this folder", "MODELS_DIR")
    ] = None,
    alias: Annotated[
        list[str], _opt("another name for the default model (repeatable)", "ALIAS")
    ] = [],  # noqa: B006
    host: Annotated[str, _opt("address to listen on", "HOST")] = DEFAULTS.host,
    port: Annotated[int, _opt("port to listen on", "PORT")] = DEFAULTS.port,
    parallel: Annotated[
        int, _opt("sequences decoded together, per model", "PARALLEL", min=1)
    ] = DEFAULTS.parallel,
    ctx: Annotated[
        int, _opt("tokens per sequence (prompt + answer)", "CTX", min=16)
    ] = DEFAULTS.ctx,
    threads: Annotated[int | None, _opt("CPU threads per model (default: all)", "THREADS")] = None,
    batch_tokens: Annotated[
        int, _opt("tokens per forward pass", "BATCH_TOKENS", min=1)
    ] = DEFAULTS.batch_tokens,
    runner: Annotated[
        str, _opt("auto, llamacpp or transformers", "RUNNER", callback=_one_of(RUNNERS))
    ] = DEFAULTS.runner,
    device: Annotated[
        str,
        _opt("transformers runner: auto, cpu or cuda", "DEVICE", callback=_one_of(DEVICES)),
    ] = DEFAULTS.device,
    dtype: Annotated[
        str,
        _opt(
            "transformers runner: auto, float32, bfloat16 or float16",
            "DTYPE",
            callback=_one_of(DTYPES),
        ),
    ] = DEFAULTS.dtype,
    max_n: Annotated[int, _opt("largest n per request", "MAX_N", min=1)] = DEFAULTS.max_n,
    max_loaded_models: Annotated[
        int, _opt("models loaded at once (0: no limit)", "MAX_LOADED_MODELS", min=0)
    ] = 0,
    memory_budget: Annotated[
        str, _opt("model bytes loaded at once, e.g. 2GB (0: no limit)", "MEMORY_BUDGET")
    ] = "0",
    keep_alive: Annotated[
        float, _opt("unload a model idle this many seconds (0: never)", "KEEP_ALIVE", min=0)
    ] = 0,
    wait_timeout: Annotated[
        float, _opt("longest x-wait-for-model wait, seconds", "WAIT_TIMEOUT", min=0)
    ] = DEFAULTS.wait_timeout,
    load_retry: Annotated[
        float, _opt("seconds before a failed load is retried", "LOAD_RETRY", min=0)
    ] = DEFAULTS.load_retry,
    max_queue: Annotated[
        int, _opt("requests waiting per model before 429", "MAX_QUEUE", min=1)
    ] = DEFAULTS.max_queue,
    request_timeout: Annotated[
        float, _opt("seconds one request may generate (0: no limit)", "REQUEST_TIMEOUT", min=0)
    ] = 0,
    cache_url: Annotated[
        str | None,
        _opt("response cache: sqlite (default), memory, redis://... or off", "CACHE_URL"),
    ] = None,
    cache_dir: Annotated[
        Path, _opt("folder for the SQLite cache and assembled models", "CACHE_DIR")
    ] = DEFAULTS.cache_dir,
    cache_max_bytes: Annotated[
        str, _opt("response cache size cap, e.g. 256MB", "CACHE_MAX_BYTES")
    ] = "256MB",
    api_key: Annotated[list[str], _opt("accepted API key (repeatable)", "API_KEY")] = [],  # noqa: B006
    api_key_file: Annotated[
        Path | None, _opt("file of API keys, one per line", "API_KEY_FILE")
    ] = None,
    log_level: Annotated[
        str, _opt("debug, info, warning or error", "LOG_LEVEL")
    ] = DEFAULTS.log_level,
    image_max_bytes: Annotated[
        str, _opt("largest image accepted, e.g. 20MB", "IMAGE_MAX_BYTES")
    ] = "20MB",
    image_max_pixels: Annotated[
        int, _opt("largest image, width x height", "IMAGE_MAX_PIXELS", min=1)
    ] = DEFAULTS.image_max_pixels,
    image_timeout: Annotated[
        float, _opt("seconds to fetch one image", "IMAGE_TIMEOUT", min=0.1)
    ] = DEFAULTS.image_timeout,
    image_max_redirects: Annotated[
        int, _opt("redirects followed per image", "IMAGE_MAX_REDIRECTS", min=0)
    ] = DEFAULTS.image_max_redirects,
    max_images: Annotated[
        int, _opt("images one request may carry", "MAX_IMAGES", min=1)
    ] = DEFAULTS.max_images,
    allow_private_images: Annotated[
        bool, _opt("fetch image URLs on private/loopback addresses", "ALLOW_PRIVATE_IMAGES")
    ] = False,
    image_allow_host: Annotated[
        list[str],
        _opt("a host whose images are fetched even if private (repeatable)", "IMAGE_ALLOW_HOST"),
    ] = [],  # noqa: B006
):
    """Serve the chat-completion API (and the playground) on HOST:PORT."""
    import uvicorn

    from chatd.models import sources
    from chatd.models.registry import Registry
    from chatd.server.app import create_app

    settings = Settings(
        host=host, port=port, models=model, models_dir=models_dir, aliases=alias,
        parallel=parallel, ctx=ctx, threads=threads, batch_tokens=batch_tokens, max_n=max_n,
        max_loaded_models=max_loaded_models, memory_budget=parse_size(memory_budget),
        keep_alive=keep_alive, wait_timeout=wait_timeout, load_retry=load_retry,
        max_queue=max_queue, request_timeout=request_timeout, cache_url=cache_url,
        cache_dir=cache_dir, cache_max_bytes=parse_size(cache_max_bytes), api_keys=api_key,
        api_key_file=api_key_file, log_level=log_level, runner=runner, device=device, dtype=dtype,
        image_max_bytes=parse_size(image_max_bytes), image_max_pixels=image_max_pixels,
        image_timeout=image_timeout, image_max_redirects=image_max_redirects, max_images=max_images,
        allow_private_images=allow_private_images, image_allow_hosts=image_allow_host,
    )  # fmt: skip
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        found = sources.discover(settings.models, settings.models_dir)
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    registry = Registry(settings, found)
    try:
        app_ = create_app(settings, registry)
    except ValueError as exc:  # an unreadable key file, an unknown cache URL
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    _show_load_progress(registry)
    registry.start_loading(registry.default)
    uvicorn.run(app_, host=host, port=port, log_level=log_level.lower())


def parse_size(text: str) -> int:
    """'2GB', '512MiB', '1000' -> bytes (decimal and binary units)."""
    units = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
             "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}  # fmt: skip
    number = text.strip().upper().removesuffix("B")
    digits = number.rstrip("KMGTI")
    try:
        return int(float(digits) * units[number[len(digits) :]])
    except (ValueError, KeyError) as exc:
        raise typer.BadParameter(f"not a size: {text!r} (try 2GB or 512MiB)") from exc


def _show_load_progress(registry) -> None:
    progress = Progress(
        TextColumn("loading [bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task(registry.default.id, total=1.0)
    progress.start()

    def update(entry) -> None:
        if entry is not registry.default or not progress.live.is_started:
            return
        progress.update(task, completed=entry.progress)
        if entry.progress >= 1.0:
            progress.stop()

    registry.listeners.append(update)


@app.command()
def models(
    models_dir: Annotated[
        Path | None, _opt("also list the models in this folder", "MODELS_DIR")
    ] = None,
):
    """List the models that can be served here (packaged, and those in --models-dir)."""
    from chatd.models.sources import packaged_models, scan_models_dir

    table = Table("id", "path", title="models")
    for source in packaged_models() + (scan_models_dir(models_dir) if models_dir else []):
        table.add_row(source.id, str(source.path))
    Console().print(table)


@app.command()
def chat(
    url: Annotated[str, _opt("the chatd server", "URL")] = "http://127.0.0.1:8000",
    model: Annotated[str | None, _opt("model id (default: the server's)", "CHAT_MODEL")] = None,
    system: Annotated[str | None, typer.Option(help="a system prompt")] = None,
    temperature: Annotated[float, typer.Option(help="sampling temperature")] = 0.7,
    max_tokens: Annotated[int, typer.Option(help="longest answer")] = 512,
):
    """Chat in the terminal with a running server (streamed). Ctrl-D or /exit ends."""
    import httpx

    messages = [{"role": "system", "content": system}] if system else []
    out = Console()
    with httpx.Client(base_url=url, timeout=None) as client:
        while True:
            try:
                text = out.input("[bold green]you> [/]")
            except (EOFError, KeyboardInterrupt):
                break
            if text.strip() in {"/exit", "/quit"}:
                break
            messages.append({"role": "user", "content": text})
            body = {"model": model, "messages": messages, "stream": True,
                    "temperature": temperature, "max_tokens": max_tokens}  # fmt: skip
            answer = _stream_answer(client, body, out)
            messages.append({"role": "assistant", "content": answer})


def _stream_answer(client, body, out: Console) -> str:
    parts: list[str] = []
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            out.print(f"[red]{response.status_code}: {response.text}[/red]")
            return ""
        out.print("[bold blue]bot> [/]", end="")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                out.print(f"\n[red]{chunk['error']}[/red]")
                break
            for choice in chunk.get("choices", []):
                piece = choice["delta"].get("content") or ""
                parts.append(piece)
                out.print(piece, end="", markup=False, highlight=False)
    out.print()
    return "".join(parts)
