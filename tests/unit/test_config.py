"""Settings through the real `chatd serve` command (in-process, `--print-settings` instead of
serving): defaults, CHATD_* variables, the TOML file, their precedence, validation errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chatd import cli
from chatd.config import SECTIONS, Settings, env_name, flag_of, format_size, parse_size
from chatd.models import sources


@pytest.fixture(autouse=True)
def no_chatd_environment(monkeypatch):
    """The CHATD_* variables of whoever runs the tests must not leak into them."""
    for name in Settings.model_fields:
        monkeypatch.delenv(env_name(name), raising=False)


def invoke(*args: str, env: dict[str, str] | None = None):
    env = {"COLUMNS": "200", **(env or {})}  # no wrapped help or error lines
    return CliRunner().invoke(cli.app, list(args), env=env)


def settings(*args: str, env: dict[str, str] | None = None) -> dict:
    result = invoke("serve", "--print-settings", *args, env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def refused(*args: str, env: dict[str, str] | None = None) -> str:
    """The error output of a command that must exit 2 (a usage error) without a traceback."""
    result = invoke(*args, env=env)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    return result.output


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "chatd.toml"
    path.write_text(text)
    return str(path)


def test_defaults_are_the_declared_ones():
    shown = settings()
    assert shown == json.loads(Settings().model_dump_json())
    assert shown["parallel"] == 8 and shown["ctx"] == 4096 and shown["threads"] is None
    assert shown["models"] == [] and shown["runner"] == "auto"
    assert shown["cache_max_bytes"] == 256 * 2**20
    assert shown["image_max_bytes"] == 20 * 2**20
    assert Path(shown["cache_dir"]) == Path.home() / ".cache" / "chatd"


def test_help_lists_every_setting_with_its_help_in_its_section():
    result = invoke("serve", "--help")
    assert result.exit_code == 0
    for section in SECTIONS:
        assert section.model_config["title"] in result.output
    for name, field in Settings.model_fields.items():
        assert f"--{flag_of(name).name}" in result.output
        assert field.description and field.description in result.output
    assert "--no-allow-private-images" in result.output
    assert "[default: 256MiB]" in result.output  # sizes shown as sizes


def test_flags_are_parsed_into_settings():
    shown = settings(
        "--model", "a.gguf", "--model", "id=b.gguf", "--alias", "x", "--api-key", "k1",
        "--image-allow-host", "cam.local", "--image-allow-host", "10.0.0.7",
        "--threads", "3", "--memory-budget", "2GB", "--cache-max-bytes", "1MiB",
        "--image-max-bytes", "512KB", "--port", "9001", "--dtype", "bfloat16",
        "--allow-private-images", "--request-timeout", "2.5",
    )  # fmt: skip
    assert shown["models"] == ["a.gguf", "id=b.gguf"]
    assert shown["aliases"] == ["x"]
    assert shown["image_allow_hosts"] == ["cam.local", "10.0.0.7"]
    assert shown["threads"] == 3 and shown["port"] == 9001 and shown["dtype"] == "bfloat16"
    assert shown["memory_budget"] == 2 * 10**9
    assert shown["cache_max_bytes"] == 2**20
    assert shown["image_max_bytes"] == 512_000
    assert shown["allow_private_images"] is True
    assert shown["request_timeout"] == 2.5


def test_api_keys_are_never_printed():
    shown = settings("--api-key", "sk-secret-1", env={"CHATD_API_KEY": "sk-a sk-b"})
    assert shown["api_keys"] == ["***"]
    result = invoke("serve", "--print-settings", env={"CHATD_API_KEY": "sk-a sk-b"})
    assert "sk-" not in result.output
    assert json.loads(result.stdout)["api_keys"] == ["***", "***"]


def test_environment_variables_keep_the_flag_names_and_split_lists_on_spaces():
    shown = settings(
        env={
            "CHATD_PARALLEL": "3",
            "CHATD_MODEL": "a.gguf  id=b.gguf",
            "CHATD_ALIAS": "one two",
            "CHATD_IMAGE_ALLOW_HOST": "cam.local",
            "CHATD_MEMORY_BUDGET": "1.5GiB",
            "CHATD_ALLOW_PRIVATE_IMAGES": "true",
            "CHATD_RUNNER": "llamacpp",
            "CHATD_THREADS": "",  # empty: unset, as click treated it
        }
    )
    assert shown["parallel"] == 3
    assert shown["models"] == ["a.gguf", "id=b.gguf"]
    assert shown["aliases"] == ["one", "two"]
    assert shown["image_allow_hosts"] == ["cam.local"]
    assert shown["memory_budget"] == int(1.5 * 2**30)
    assert shown["allow_private_images"] is True
    assert shown["runner"] == "llamacpp"
    assert shown["threads"] is None


def test_toml_file_sets_scalars_lists_sizes_and_paths(tmp_path):
    config = write_toml(
        tmp_path,
        'parallel = 4\nmodels = ["a.gguf", "b.gguf"]\nmemory_budget = "2GB"\n'
        'cache_max_bytes = 1048576\ncache_dir = "~/chatd-cache"\nallow_private_images = true\n'
        'image_allow_hosts = ["cam.local"]\nrunner = "transformers"\n',
    )
    shown = settings("--config", config)
    assert shown["parallel"] == 4
    assert shown["models"] == ["a.gguf", "b.gguf"]
    assert shown["memory_budget"] == 2 * 10**9
    assert shown["cache_max_bytes"] == 2**20
    assert Path(shown["cache_dir"]) == Path.home() / "chatd-cache"
    assert shown["allow_private_images"] is True
    assert shown["image_allow_hosts"] == ["cam.local"]
    assert shown["runner"] == "transformers"
    assert settings(env={"CHATD_CONFIG": config})["parallel"] == 4


def test_precedence_is_flag_then_environment_then_file_then_default(tmp_path):
    config = write_toml(tmp_path, 'parallel = 2\nctx = 512\nmodels = ["file.gguf"]\n')
    env = {"CHATD_PARALLEL": "3", "CHATD_MODEL": "env.gguf"}
    both = settings("--config", config, "--parallel", "4", env=env)
    assert (both["parallel"], both["ctx"], both["models"]) == (4, 512, ["env.gguf"])
    assert settings("--config", config, "--model", "flag.gguf", env=env)["models"] == ["flag.gguf"]
    assert settings("--config", config, env=env)["parallel"] == 3
    assert settings("--config", config)["parallel"] == 2
    assert settings()["parallel"] == 8
    # A flag turns off what the environment turned on.
    off = settings("--no-allow-private-images", env={"CHATD_ALLOW_PRIVATE_IMAGES": "1"})
    assert off["allow_private_images"] is False


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "70000"], {}, "--port: Input should be less than or equal to 65535"),
        (["--parallel", "0"], {}, "--parallel: Input should be greater than or equal to 1"),
        (["--ctx", "8"], {}, "--ctx: Input should be greater than or equal to 16"),
        (["--threads", "0"], {}, "--threads: Input should be greater than or equal to 1"),
        (["--threads", "many"], {}, "--threads: Input should be a valid integer"),
        (["--wait-timeout", "-1"], {}, "--wait-timeout: Input should be greater than or equal"),
        (["--image-timeout", "0"], {}, "--image-timeout: Input should be greater than 0"),
        (["--memory-budget", "2XB"], {}, "--memory-budget: not a size: '2XB'"),
        ([], {"CHATD_MAX_QUEUE": "0"}, "CHATD_MAX_QUEUE: Input should be greater than or equal"),
        ([], {"CHATD_DEVICE": "tpu"}, "CHATD_DEVICE: Input should be 'auto', 'cpu' or 'cuda'"),
        ([], {"CHATD_CACHE_MAX_BYTES": "lots"}, "CHATD_CACHE_MAX_BYTES: not a size: 'lots'"),
        (["--log-level", "loud"], {}, "'loud' is not one of 'debug', 'info'"),
    ],
)
def test_bad_values_exit_2_naming_the_option(args, env, message):
    assert message in refused("serve", "--print-settings", *args, env=env)


def test_every_bad_value_is_reported_at_once(tmp_path):
    config = write_toml(tmp_path, "max_n = 0\n")
    out = refused(
        "serve", "--print-settings", "--config", config, "--port", "0", env={"CHATD_CTX": "1"}
    )
    assert "--port: " in out
    assert "CHATD_CTX: " in out
    assert f"max_n in {config}: Input should be greater than or equal to 1 (got 0)" in out


def test_unknown_or_malformed_config_files_are_refused(tmp_path):
    config = write_toml(tmp_path, "parallel = 4\nparalel = 8\n")
    assert f"{config}: unknown setting 'paralel'" in refused("serve", "--config", config)
    config = write_toml(tmp_path, 'model = "a.gguf"\n')  # the flag's name, not the setting's
    assert "unknown setting 'model' (did you mean 'models'?)" in refused(
        "serve", "--config", config
    )
    config = write_toml(tmp_path, "models = [\n")
    assert f"config file {config}: " in refused("serve", "--config", config)
    missing = str(tmp_path / "missing.toml")
    assert f"config file {missing}: No such file" in refused("serve", "--config", missing)
    config = write_toml(tmp_path, 'config = "other.toml"\n')
    assert "cannot name another" in refused("serve", "--config", config)


def test_sizes_parse_decimal_and_binary_units():
    assert parse_size("1000") == 1000
    assert parse_size("2GB") == parse_size("2G") == 2 * 10**9
    assert parse_size("512MiB") == parse_size("512mi") == 512 * 2**20
    assert parse_size(" 1.5 KB") == 1500
    assert parse_size(4096) == 4096
    for text in ("2XB", "GB", "", "-"):
        with pytest.raises(ValueError, match="not a size"):
            parse_size(text)
    for n in (0, 1000, 20 * 2**20, 3 * 2**30, 2**20 + 1):
        assert parse_size(format_size(n)) == n
    assert format_size(256 * 2**20) == "256MiB"


def test_image_limits_come_from_the_image_settings():
    limits = Settings(
        image_max_bytes="1MiB", image_timeout=2, max_images=3, image_allow_hosts=["a", "b"]
    ).image_limits
    assert (limits.max_bytes, limits.timeout, limits.max_images) == (2**20, 2.0, 3)
    assert limits.allow_hosts == frozenset({"a", "b"}) and limits.allow_private is False


def test_config_imports_nothing_from_chatd():
    code = "import sys, chatd.config; print(sorted(m for m in sys.modules if 'chatd' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == ["chatd", "chatd.config"]


# --cache-dir reaches the assembly of the packaged Qwen file (it was read from
# CHATD_CACHE_DIR when sources.py was imported).
needs_qwen = pytest.mark.skipif(
    not any(s.id == sources.QWEN_ID for s in sources.packaged_models()),
    reason="the Qwen parts are not installed",
)


@needs_qwen
def test_models_command_assembles_qwen_under_the_cache_dir(tmp_path):
    result = invoke("models", "--cache-dir", str(tmp_path / "flag"), env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "flag" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") in result.stdout
    result = invoke("models", env={"COLUMNS": "400", "CHATD_CACHE_DIR": str(tmp_path / "env")})
    assert str(tmp_path / "env" / "qwen2.5-coder") in result.stdout


def test_serve_passes_the_cache_dir_to_model_discovery(tmp_path, monkeypatch):
    seen = {}

    def discover(specs, models_dir, cache_dir):
        seen.update(specs=specs, cache_dir=cache_dir)
        raise FileNotFoundError("stop before loading anything")

    monkeypatch.setattr(sources, "discover", discover)
    out = refused("serve", "--cache-dir", str(tmp_path), "--model", "x.gguf")
    assert "stop before loading anything" in out
    assert seen == {"specs": ["x.gguf"], "cache_dir": tmp_path}


@needs_qwen
def test_packaged_qwen_path_follows_the_cache_dir_given(tmp_path):
    by_id = {s.id: s.path for s in sources.discover([], None, tmp_path)}
    assert by_id[sources.QWEN_ID].parent == tmp_path
