"""`chatd serve | chat | models | pull`. The options of `serve` and `models` are built from the
fields of config.Settings, which also reads them from the environment and a TOML file."""

from __future__ import annotations

import inspect
import json
import logging
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from chatd.config import SECTIONS, Settings, SettingsError, flag_of, load_settings

app = typer.Typer(help="chatd: a self-hosted chat-completion server.", no_args_is_help=True)
console = Console(stderr=True)


def _opt(help: str, env: str, **kw):
    return typer.Option(help=help, envvar=f"CHATD_{env}", **kw)


def setting_options(*names: str):
    """Give a command one option per setting (those named, or all): flag, help, default and
    help section come from the Settings field. The command takes them as `**options` and
    reads them with `settings_from(context)`."""

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        options = [
            _option(name, section.model_config["title"])
            for section in SECTIONS
            for name in section.model_fields
            if not names or name in names
        ]
        command.__signature__ = signature.replace(parameters=[*own, *options])
        return command

    return decorate


def _option(name: str, panel: str) -> inspect.Parameter:
    """The typer option of one setting. Typer parses flags, lists and choices; any other value
    goes to Settings as text, checked there like a value from the environment or the file."""
    field, flag = Settings.model_fields[name], flag_of(name)
    default = field.get_default(call_default_factory=True)
    if field.annotation is bool or typing.get_origin(field.annotation) in (list, typing.Literal):
        kind, metavar = field.annotation, flag.metavar
    else:
        kind, metavar = str, flag.metavar or _type_name(field.annotation)
        default = None if default is None else flag.show(default)
    decls = [f"--{flag.name}/--no-{flag.name}"] if kind is bool else [f"--{flag.name}"]
    option = typer.Option(*decls, help=field.description, rich_help_panel=panel, metavar=metavar)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option]
    )


def _type_name(annotation: Any) -> str:
    """INT for `int | None`, PATH for `Annotated[Path, ...] | None`."""
    (kind,) = [t for t in typing.get_args(annotation) or [annotation] if t is not type(None)]
    return getattr(kind, "__origin__", kind).__name__.upper()


def settings_from(context: typer.Context) -> Settings:
    """The settings of this command: the options given on its command line, then the
    environment, the config file and the defaults. Bad values end the command with exit 2."""
    given = {
        name: value
        for name, value in context.params.items()
        if name in Settings.model_fields
        and context.get_parameter_source(name).name == "COMMANDLINE"
    }
    try:
        return load_settings(given)
    except SettingsError as exc:
        console.print(str(exc), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
@setting_options()
def serve(
    context: typer.Context,
    print_settings: Annotated[
        bool, typer.Option("--print-settings", help="print the settings in effect (JSON), exit")
    ] = False,
    **options: Any,
):
    """Serve the chat-completion API (and the playground) on HOST:PORT.

    Every option also reads CHATD_<OPTION> (CHATD_PARALLEL=4; a list's items
    are split on spaces: CHATD_MODEL="a.gguf b.gguf") and the TOML file named
    by --config (parallel = 4, models = ["a.gguf"], memory_budget = "2GB").
    A flag wins over the environment, the environment over the file.
    """
    settings = settings_from(context)
    if print_settings:
        typer.echo(settings.model_dump_json(indent=2))
        return
    if settings.cluster:
        _on_cluster(lambda deploy: deploy.run(settings))
        return
    from chatd.models import sources
    from chatd.models.registry import Registry
    from chatd.server import http
    from chatd.server.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        specs = [_pulled(spec, settings) for spec in settings.models]
        found = sources.discover(specs, settings.models_dir, settings.cache_dir)
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
    http.serve(app_, settings)


def _pulled(spec: str, settings: Settings) -> str:
    """A --model naming a Hub model (`org/name[:QUANT]`, not a packaged id or a path) as
    ID=PATH once pulled: from the cache, or downloaded before serving (--pull never: the
    cache only)."""
    from chatd.models import pull
    from chatd.models.hub import HubRef, is_hub_id
    from chatd.models.sources import packaged_models

    packaged = {s.id for s in packaged_models(settings.cache_dir)}
    if "=" in spec or spec in packaged or not is_hub_id(spec) or Path(spec).exists():
        return spec
    ref = HubRef.parse(spec)
    path = pull.local_path(ref)
    if path is None and settings.pull == "never":
        raise FileNotFoundError(f"{spec} is not in the Hugging Face cache (and --pull is never)")
    if path is None:
        path = _pull_with_progress(ref, settings.memory_budget)
    return f"{ref.id}={path}"


def _pull_with_progress(ref, memory_budget: int = 0) -> Path:
    """Download with a progress bar, the total size shown up front; a refusal ends the
    command with its reason (exit 1)."""
    from chatd.models import errors, pull

    progress = Progress(
        TextColumn("pulling [bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    task = None

    def planned(plan) -> None:
        nonlocal task
        names = ", ".join(f.path for f in plan.files)
        count = f"{len(plan.files)} file{'s' * (len(plan.files) != 1)}"
        console.print(f"{ref.id}: {count}, {plan.total / 1e6:.1f} MB ({names})", highlight=False)
        task = progress.add_task(ref.id, total=plan.total)
        progress.start()

    try:
        return pull.pull(
            ref, memory_budget, planned, lambda done: progress.update(task, completed=done)
        )
    except (errors.ModelNotFound, errors.PullRefused, errors.NoWeights, errors.NoDisk) as exc:
        message = str(exc)
    except Exception as exc:  # the Hub failed mid-way: say so, without a traceback
        message = f"{ref.id}: download failed: {exc}"
    finally:
        progress.stop()
    console.print(message, style="red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _on_cluster(action):
    """Run `action(chatd.cluster.deploy)`: exit 2 with the reason if the cluster extra is
    not installed or the settings do not fit a cluster."""
    try:
        from chatd.cluster import deploy
    except ImportError as exc:
        console.print(f"[red]{exc.name}: the cluster needs pip install 'chatd[cluster]'[/red]")
        raise typer.Exit(2) from exc
    try:
        return action(deploy)
    except SettingsError as exc:
        console.print(str(exc), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except RuntimeError as exc:  # Serve's "Deploying application chatd failed: ..."
        console.print(f"{exc} (the replicas' logs say why: ray logs, or the head node's "
                      "/tmp/ray/session_latest/logs/serve/)", style="red", markup=False,
                      highlight=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(1) from None


cluster = typer.Typer(help="chatd on a Ray cluster (the chatd[cluster] extra).")
app.add_typer(cluster, name="cluster")


@cluster.command("config")
@setting_options()
def cluster_config(context: typer.Context, **options: Any):
    """Print a Ray Serve config file serving these settings: `serve deploy` it (every node
    needs chatd[cluster] and the models). --api-key is not written: use --api-key-file."""
    settings = settings_from(context)
    typer.echo(_on_cluster(lambda deploy: deploy.config_file(settings)), nl=False)


@app.command("pull")
def pull_command(
    model: Annotated[str, typer.Argument(help="ORG/NAME or ORG/NAME:QUANT (a GGUF repo)")],
    revision: Annotated[str | None, typer.Option(help="branch, tag or commit")] = None,
):
    """Download a model from the Hugging Face Hub into its cache (HF_HOME, HF_TOKEN,
    HF_ENDPOINT and HF_HUB_OFFLINE apply); prints the path chatd serves it from."""
    from chatd.models.hub import HubRef

    try:
        ref = HubRef.parse(model, revision)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from None
    typer.echo(_pull_with_progress(ref))


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
@setting_options("config", "models_dir", "cache_dir")
def models(context: typer.Context, **options: Any):
    """List the models that can be served here (packaged, and those in --models-dir)."""
    from chatd.models.sources import packaged_models, scan_models_dir

    settings = settings_from(context)
    found = packaged_models(settings.cache_dir)
    try:
        found += scan_models_dir(settings.models_dir) if settings.models_dir else []
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    table = Table("id", "path", title="models")
    for source in found:
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
