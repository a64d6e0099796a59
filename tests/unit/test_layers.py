"""The layering rule (docs/architecture.md), read from the imports of every module, the ones
inside functions too: each layer may import only what lies beneath it."""

import ast
from pathlib import Path

import pytest

import chatd

SRC = Path(chatd.__file__).parent
HTTP = ("fastapi", "starlette", "uvicorn")
UPPER = ("chatd.server", "chatd.cli", "chatd.cluster")

# What each package must not import.
FORBIDDEN = {
    "engine": (
        "chatd.chat",
        "chatd.models",
        "chatd.protocol",
        "chatd.cache",
        "chatd.config",
        *UPPER,
        *HTTP,
    ),  # fmt: skip
    "protocol": (
        "chatd.engine",
        "chatd.chat",
        "chatd.models",
        "chatd.cache",
        "chatd.config",
        *UPPER,
        *HTTP,
    ),  # fmt: skip
    "chat": ("chatd.models", "chatd.cache", *UPPER, *HTTP),
    "models": ("chatd.cache", *UPPER, *HTTP),
    "cache": ("chatd.engine", "chatd.chat", "chatd.models", *UPPER, *HTTP),
    "config.py": ("chatd",),
}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(part: str) -> list[Path]:
    target = SRC / part
    return [target] if target.is_file() else sorted(target.rglob("*.py"))


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_layer_imports_only_what_lies_beneath(part):
    assert modules(part), f"no modules under {part}"
    broken = {
        f"{path.relative_to(SRC)} imports {name}"
        for path in modules(part)
        for name in imports(path)
        if any(
            name == bad.rstrip(".") or name.startswith(bad.rstrip(".") + ".")
            for bad in FORBIDDEN[part]
        )
    }
    assert not broken, sorted(broken)


def test_the_check_sees_a_forbidden_import(tmp_path):
    """The checker itself can fail: a module importing the server is caught."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from chatd.server.errors import ChatdError\n")
    assert "chatd.server.errors" in imports(module)


def test_only_the_cluster_package_imports_ray():
    """Ray is an optional extra: a plain install (`make run`) never imports it."""
    outside = {
        f"{path.relative_to(SRC)} imports {name}"
        for path in sorted(SRC.rglob("*.py"))
        if "cluster" not in path.relative_to(SRC).parts
        for name in imports(path)
        if name == "ray" or name.startswith("ray.")
    }
    assert not outside, sorted(outside)
    assert any(name.startswith("ray") for path in modules("cluster") for name in imports(path)), (
        "the check would pass on nothing: chatd/cluster/ imports ray"
    )
