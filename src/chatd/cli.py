"""`chatd serve | chat | models`. Each option also reads its CHATD_* environment variable."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from chatd.config import Settings

app = typer.Typer(help="chatd: a self-hosted chat-completion server.", no_args_is_help=True)
console = Console(stderr=True)
DEFAULTS = Settings()


def _opt(help: str, env: str, **kw):
    return typer.Option(help=help, envvar=f"CHATD_{env}", **kw)


@app.command()
def serve(
    model: Annotated[
        str | None, _opt("GGUF path, or ID=PATH; default: the packaged model", "MODEL")
    ] = None,
    alias: Annotated[
        list[str], _opt("another name for the served model (repeatable)", "ALIAS")
    ] = [],  # noqa: B006
    host: Annotated[str, _opt("address to listen on", "HOST")] = DEFAULTS.host,
    port: Annotated[int, _opt("port to listen on", "PORT")] = DEFAULTS.port,
    parallel: Annotated[
        int, _opt("sequences decoded together", "PARALLEL", min=1)
    ] = DEFAULTS.parallel,
    ctx: Annotated[
        int, _opt("tokens per sequence (prompt + answer)", "CTX", min=16)
    ] = DEFAULTS.ctx,
    threads: Annotated[
        int | None, _opt("CPU threads for the model (default: all)", "THREADS")
    ] = None,
    batch_tokens: Annotated[
        int, _opt("tokens per forward pass", "BATCH_TOKENS", min=1)
    ] = DEFAULTS.batch_tokens,
    max_n: Annotated[int, _opt("largest n per request", "MAX_N", min=1)] = DEFAULTS.max_n,
    log_level: Annotated[
        str, _opt("debug, info, warning or error", "LOG_LEVEL")
    ] = DEFAULTS.log_level,
):
    """Serve the chat-completion API (and the playground) on HOST:PORT."""
    import uvicorn

    from chatd.models import sources
    from chatd.models.registry import Registry
    from chatd.server.app import create_app

    settings = Settings(
        host=host, port=port, model=model, aliases=alias, parallel=parallel, ctx=ctx,
        threads=threads, batch_tokens=batch_tokens, max_n=max_n, log_level=log_level,
    )  # fmt: skip
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        source = sources.resolve(model)
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    registry = Registry(settings, source)
    _show_load_progress(registry)
    registry.load_in_background()
    uvicorn.run(create_app(settings, registry), host=host, port=port, log_level=log_level.lower())


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
        progress.update(task, completed=entry.progress)
        if entry.progress >= 1.0:
            progress.stop()

    registry.on_progress = update


@app.command()
def models():
    """List the models that can be served here."""
    from chatd.models.sources import packaged_models

    table = Table("id", "path", title="packaged models")
    for source in packaged_models():
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
