"""The settings of `chatd serve`, declared once. Each field is a CLI flag (cli.py builds the
options from these fields: name, help, default, section), an environment variable CHATD_<FLAG>
and a key of the TOML file named by `--config`. Precedence: flag > environment > file > default.
Values are checked here whatever their source. This module imports nothing from chatd.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_serializer,
    model_validator,
)
from pydantic import ValidationError as _ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "CHATD_"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "chatd"


@dataclass(frozen=True)
class Flag:
    """What a field alone does not say about its flag: its name when it differs from the
    field's (a repeatable flag names one item), the placeholder its help shows, and how its
    default reads there."""

    name: str | None = None
    metavar: str | None = None
    show: Callable[[Any], str] = str


@dataclass(frozen=True)
class ImageLimits:
    """How image URLs in messages are fetched (chat/images.py), from the Images settings."""

    max_bytes: int = 20 * 2**20  # encoded size
    max_pixels: int = 4096 * 4096  # width*height, checked from the header before decoding
    # Longer side over shorter. A processor that scales the shorter side up to its size
    # (LLaVA's 336) makes a 1x8000 image 336x2.7M: bounded here, before any processor runs.
    max_aspect: float = 20.0
    timeout: float = 10.0  # seconds for one image, all redirects included
    max_redirects: int = 3
    max_images: int = 16  # per request: each one costs a fetch and vision-tower work
    allow_private: bool = False  # operator flag: fetch from private/loopback/link-local addresses
    # Hosts (names or IP literals, any case) fetched even when they are private.
    allow_hosts: frozenset[str] = frozenset()


_SIZE_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
               "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}  # fmt: skip


def parse_size(value: Any) -> Any:
    """'2GB', '512MiB', '1000' -> bytes (decimal and binary units); numbers pass through."""
    if not isinstance(value, str):
        return value
    number = value.strip().upper().removesuffix("B")
    digits = number.rstrip("KMGTI")
    try:
        return int(float(digits) * _SIZE_UNITS[number[len(digits) :]])
    except (ValueError, KeyError):
        raise ValueError(f"not a size: {value!r} (try 2GB or 512MiB)") from None


def format_size(n: int) -> str:
    """The shortest exact spelling parse_size reads back: 20971520 -> '20MiB'."""
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        scale = _SIZE_UNITS[unit.upper()]
        if n and n % scale == 0:
            return f"{n // scale}{unit}B"
    return str(n)


Size = Annotated[
    int, BeforeValidator(parse_size), Field(ge=0), Flag(metavar="SIZE", show=format_size)
]
Seconds = Annotated[float, Field(ge=0), Flag(metavar="SECONDS")]
UserPath = Annotated[Path, AfterValidator(Path.expanduser)]  # "~/x" in a file or quoted flag


def _check_aliases(aliases: list[str]) -> list[str]:
    for alias in aliases:
        name, sep, target = alias.partition("=")
        if not name.strip() or (sep and not target.strip()):
            raise ValueError(f"an alias is NAME or NAME=ID, not {alias!r}")
    return aliases


def _check_patterns(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        if not pattern.strip() or any(c.isspace() for c in pattern):
            raise ValueError(f"a pattern matches ORG/NAME, like 'google/*', not {pattern!r}")
    return patterns


class ServerSettings(BaseModel):
    model_config = ConfigDict(title="Server")

    config: UserPath | None = Field(
        None,
        description="TOML file of settings; keys: the options' names with _, lists plural "
        '(max_n = 4, models = ["a.gguf"])',
    )
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=1, le=65535, description="port to listen on")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="what the log shows"
    )


class LimitSettings(BaseModel):
    model_config = ConfigDict(title="Connection limits")

    max_body_bytes: Annotated[Size | None, Flag(metavar="SIZE")] = Field(
        None,
        description="largest request body, 413 past it (default: one image of "
        "--image-max-bytes as a data URL, plus 4MiB)",
    )
    header_timeout: Seconds = Field(
        10, gt=0, description="seconds a client may take to send a request's headers"
    )
    shutdown_timeout: Seconds = Field(
        20,
        description="seconds running answers may take to finish after SIGTERM; then they end "
        "with an error event (streams) or a 503",
    )
    body_timeout: Seconds = Field(
        30, gt=0, description="seconds a client may pause while sending a body (408)"
    )
    max_connections: int = Field(
        1024, ge=1, description="open connections at once; past it, new ones get 503"
    )


class ModelSettings(BaseModel):
    model_config = ConfigDict(title="Models")

    # The first model is the default, loaded at start; the others load on first use.
    models: Annotated[list[str], Flag("model", "PATH|ID|ID=PATH|ORG/NAME[:QUANT]")] = Field(
        default_factory=list,
        description="GGUF path, packaged id, ID=PATH, or a Hub id, pulled before serving "
        "(repeatable; the first is the default; none: the packaged default)",
    )
    models_dir: UserPath | None = Field(
        None, description="serve the GGUF files and HF folders in this folder"
    )
    aliases: Annotated[list[str], Flag("alias", "NAME|NAME=ID"), AfterValidator(_check_aliases)] = (
        Field(
            default_factory=list,
            description="another name for the default model, or NAME=ID for any model, a Hub "
            "id too (repeatable)",
        )
    )
    # auto = llama.cpp for GGUF files (transformers, dequantising, if llama.cpp cannot read
    # one), transformers for Hugging Face folders.
    runner: Literal["auto", "llamacpp", "transformers"] = Field(
        "auto", description="which runner loads a model"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="transformers runner: auto = CUDA when present"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="transformers runner: auto = bfloat16 on CUDA, float32 on the CPU"
    )
    threads: int | None = Field(None, ge=1, description="CPU threads per model (default: all)")


class PullSettings(BaseModel):
    model_config = ConfigDict(title="Pulling from the Hugging Face Hub")

    # auto: a request naming `org/name[:QUANT]` that is not on disk downloads it (HF_TOKEN,
    # HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE as huggingface_hub reads them).
    pull: Literal["auto", "never"] = Field(
        "auto", description="auto: download a Hub model a request names; never: serve what is here"
    )
    pull_allow_patterns: Annotated[
        list[str], Flag("pull-allow", "PATTERN"), AfterValidator(_check_patterns)
    ] = Field(
        default_factory=list,
        description="Hub ids requests may pull, fnmatch, e.g. 'google/*' (repeatable; none: any)",
    )


class BatchSettings(BaseModel):
    model_config = ConfigDict(title="Batching")

    parallel: int = Field(8, ge=1, description="sequences decoded together (KV slots), per model")
    ctx: int = Field(4096, ge=16, description="tokens per sequence (prompt + answer)")
    batch_tokens: int = Field(512, ge=1, description="tokens one forward pass may take")
    prefix_cache_bytes: Size = Field(
        2 * 2**30,
        description="host memory per model for the KV cache of prompts whose slot was taken, "
        "restored for a prompt that begins with one, e.g. 2GiB (0: off)",
    )
    max_n: int = Field(16, ge=1, description="largest n (choices) per request")
    max_queue: int = Field(256, ge=1, description="requests waiting per model before 429")
    request_timeout: Seconds = Field(
        0, description="seconds one request may generate (0: no limit)"
    )
    # ngram: decoding sequences draft their next tokens from n-grams of their own prompt and
    # output and verify them in the step's forward, where the drafts pay (engine/speculative.py).
    speculative: Literal["ngram", "off"] = Field(
        "off", description="speculative decoding: ngram (prompt-lookup drafts) or off"
    )
    speculative_cost: float | None = Field(
        None, ge=0, description="what a drafted position costs, as a share of a one-token "
        "forward (default: measured when a model loads)",
    )  # fmt: skip


class ResidencySettings(BaseModel):
    model_config = ConfigDict(title="Loading and unloading")

    max_loaded_models: int = Field(0, ge=0, description="models loaded at once (0: no limit)")
    memory_budget: Size = Field(0, description="model bytes loaded at once, e.g. 2GB (0: no limit)")
    keep_alive: Seconds = Field(0, description="unload a model idle this many seconds (0: never)")
    wait_timeout: Seconds = Field(300, description="longest x-wait-for-model wait")
    load_retry: Seconds = Field(30, description="seconds before a failed load is retried")


class CacheSettings(BaseModel):
    model_config = ConfigDict(title="Response cache")

    cache_url: str | None = Field(
        None, description="sqlite (default, under cache_dir), memory, redis://... or off"
    )
    cache_dir: UserPath = Field(
        DEFAULT_CACHE_DIR, description="folder for the SQLite cache and assembled models"
    )
    cache_max_bytes: Size = Field(256 * 2**20, description="response cache size cap, e.g. 256MB")


class AuthSettings(BaseModel):
    model_config = ConfigDict(title="Auth")

    # With keys set, the API needs `authorization: Bearer <key>`.
    api_keys: Annotated[list[str], Flag("api-key", "KEY")] = Field(
        default_factory=list, description="accepted API key (repeatable)"
    )
    api_key_file: UserPath | None = Field(None, description="file of API keys, one per line")


class ImageSettings(BaseModel):
    model_config = ConfigDict(title="Image URLs")

    image_max_bytes: Size = Field(ImageLimits.max_bytes, description="largest image, e.g. 20MB")
    image_max_pixels: int = Field(
        ImageLimits.max_pixels, ge=1, description="largest image, width x height"
    )
    image_max_aspect: float = Field(
        ImageLimits.max_aspect, ge=1, description="largest image aspect ratio (long/short side)"
    )
    image_timeout: Seconds = Field(
        ImageLimits.timeout, gt=0, description="seconds to fetch one image"
    )
    image_max_redirects: int = Field(
        ImageLimits.max_redirects, ge=0, description="redirects followed per image"
    )
    max_images: int = Field(
        ImageLimits.max_images, ge=1, description="images one request may carry"
    )
    allow_private_images: bool = Field(
        ImageLimits.allow_private, description="fetch image URLs on private/loopback addresses"
    )
    image_allow_hosts: Annotated[list[str], Flag("image-allow-host", "HOST")] = Field(
        default_factory=list,
        description="a host whose images are fetched even if private (repeatable)",
    )


class ClusterSettings(BaseModel):
    model_config = ConfigDict(title="Cluster (Ray Serve)")

    cluster: str | None = Field(
        None,
        description="deploy on this Ray cluster instead of serving here: ray://HOST:10001 "
        "(Ray Client) or HOST:6379 (on a cluster node)",
    )
    replicas: int = Field(1, ge=1, description="chatd replicas, each with its own models")
    min_replicas: int | None = Field(
        None, ge=1, description="autoscale from this many replicas (with --max-replicas)"
    )
    max_replicas: int | None = Field(
        None, ge=1, description="autoscale up to this many, at --parallel requests per replica"
    )
    replica_cpus: float | None = Field(
        None, gt=0, description="CPUs Ray reserves per replica (default: --threads, else 1)"
    )
    ingress_replicas: int = Field(
        1, ge=1, description="HTTP ingress replicas (more than one needs a redis:// cache)"
    )
    prefix_routing: bool = Field(
        True, description="send a conversation to the replica that cached its prefix"
    )

    @model_validator(mode="after")
    def _autoscaling_bounds(self):
        low, high = self.min_replicas, self.max_replicas
        if (low is None) != (high is None):
            raise ValueError("--min-replicas and --max-replicas go together")
        if low is not None and low > high:
            raise ValueError(f"--min-replicas {low} is above --max-replicas {high}")
        return self


class Settings(
    ClusterSettings,
    ImageSettings,
    AuthSettings,
    CacheSettings,
    ResidencySettings,
    BatchSettings,
    PullSettings,
    ModelSettings,
    LimitSettings,
    ServerSettings,
    BaseSettings,
):
    """Every setting of a chatd server, section by section. The sections are listed last
    first: pydantic takes the fields of the last base first."""

    model_config = SettingsConfigDict(title="Settings", extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init_settings: the flags given (or a test's keywords).
        return init_settings, _Environment(settings_cls), _ConfigFile(settings_cls)

    @field_serializer("api_keys")
    def _hide_keys(self, keys: list[str]) -> list[str]:
        return ["***"] * len(keys)  # a dump (serve --print-settings) never shows a key

    @property
    def body_limit(self) -> int:
        """--max-body-bytes, or what one data-URL image of the largest allowed size needs."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return -(-self.image_max_bytes * 4 // 3) + 4 * 2**20

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(
            max_bytes=self.image_max_bytes,
            max_pixels=self.image_max_pixels,
            max_aspect=self.image_max_aspect,
            timeout=self.image_timeout,
            max_redirects=self.image_max_redirects,
            max_images=self.max_images,
            allow_private=self.allow_private_images,
            allow_hosts=frozenset(self.image_allow_hosts),  # normalised where compared
        )


# The sections in the order of their fields (and of `chatd serve --help`).
SECTIONS: tuple[type[BaseModel], ...] = tuple(reversed(Settings.__bases__[:-1]))


def flag_of(name: str) -> Flag:
    """The flag of a setting, named (without its dashes) after the field unless declared:
    `max_n` -> 'max-n', `models` -> 'model'."""
    field = Settings.model_fields[name]
    declared = next((m for m in field.metadata if isinstance(m, Flag)), Flag())
    return replace(declared, name=declared.name or name.replace("_", "-"))


def env_name(name: str) -> str:
    """The environment variable of a setting: CHATD_ and its flag's name (CHATD_MODEL)."""
    return ENV_PREFIX + flag_of(name).name.replace("-", "_").upper()


class SettingsError(ValueError):
    """Settings that cannot be used; one line per problem, naming where the value came from."""


def load_settings(given: dict[str, Any]) -> Settings:
    """Settings from the flags given, the environment, the config file and the defaults."""
    try:
        return Settings(**given)
    except _ValidationError as exc:
        config = given.get("config") or os.environ.get(env_name("config"))
        raise SettingsError(
            "\n".join(_describe(error, given, config) for error in exc.errors())
        ) from None


def _describe(error: dict, given: dict[str, Any], config: str | None) -> str:
    name = str(error["loc"][0]) if error["loc"] else ""
    if not name:  # a check across settings (model_validator): its message names them
        return str(error["ctx"]["error"])
    if error["type"] == "extra_forbidden":
        return f"{config}: unknown setting {name!r}{_did_you_mean(name)}"
    if name in given:
        where = f"--{flag_of(name).name}"
    elif os.environ.get(env_name(name)):
        where = env_name(name)
    else:
        where = f"{name} in {config}"
    if error["type"] == "value_error":  # our own message (parse_size) says what it got
        return f"{where}: {error['ctx']['error']}"
    return f"{where}: {error['msg']} (got {error['input']!r})"


def _did_you_mean(key: str) -> str:
    """A file key spelt like a flag (`model`, `api_key`) names the setting it meant."""
    for name in Settings.model_fields:
        if flag_of(name).name.replace("-", "_") == key != name:
            return f" (did you mean {name!r}?)"
    return ""


class _Environment(PydanticBaseSettingsSource):
    """CHATD_<FLAG> variables (CHATD_MODEL for --model); a list's items are split on spaces.
    An empty variable counts as unset."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        text = os.environ.get(env_name(field_name)) or None
        if text and get_origin(field.annotation) is list:
            return text.split(), field_name, True
        return text, field_name, False

    def __call__(self) -> dict[str, Any]:
        values = {}
        for name, field in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(field, name)
            if value is not None:
                values[name] = value
        return values


class _ConfigFile(PydanticBaseSettingsSource):
    """The TOML file named by `config` (a flag or the environment: the sources read before
    this one); its keys are the settings' names."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # the file is read whole, in __call__

    def __call__(self) -> dict[str, Any]:
        path = self.current_state.get("config")
        if not path:
            return {}
        path = Path(path).expanduser()
        try:
            with path.open("rb") as f:
                values = tomllib.load(f)
        except OSError as exc:
            raise SettingsError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path}: {exc}") from None
        if "config" in values:
            raise SettingsError(f"{path}: a config file cannot name another (key 'config')")
        return values
