"""Which files of a Hugging Face Hub repo chatd needs, from its file list alone (no network).

A GGUF repo (one with a `.gguf` file) gives one quantisation: the one named after `:` in
`org/name:Q4_K_M` (case-insensitive, like llama-server and Ollama), else Q4_K_M, else the
smallest; a split GGUF (`...-00001-of-00003.gguf`) is every part. Any other repo gives what the
transformers runner reads: config, safetensors weights (pickled `.bin`/`.pt` only when there
are no safetensors), tokenizer, processor and chat-template files, and never other frameworks'
weights (TensorFlow, Flax, ONNX, ...), which live under other names or in subfolders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from chatd.models.errors import ModelNotFound, NoWeights

DEFAULT_QUANT = "Q4_K_M"
# org/name with the Hub's characters, then an optional :QUANT.
_HUB_ID = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?::(?P<quant>[\w.-]+))?", re.ASCII)
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
_QUANT_TOKEN = re.compile(r"^(I?Q\d\w*|TQ\d\w*|F16|BF16|F32)$", re.IGNORECASE)
# The transformers runner's files, at the top of the repo (tokenizer.model, spiece.model:
# sentencepiece; vocab.txt, merges.txt: BPE and WordPiece vocabularies).
_SUPPORT_SUFFIXES = (".json", ".jinja", ".model", ".tiktoken", ".txt")
_PICKLES = (".bin", ".pt", ".pth")
# Pickled weights that belong to another framework or another use, never the model's.
_NOT_PYTORCH = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth")


@dataclass(frozen=True)
class HubRef:
    """A model on the Hub as a user names it: `org/name`, an optional quantisation, a revision."""

    repo_id: str
    quant: str | None = None
    revision: str | None = None

    @classmethod
    def parse(cls, spec: str, revision: str | None = None) -> HubRef:
        match = _HUB_ID.fullmatch(spec)
        if not match:
            raise ValueError(f"not a Hub id: {spec!r} (expected ORG/NAME or ORG/NAME:QUANT)")
        quant = match["quant"]
        return cls(match["repo"], quant.upper() if quant else None, revision)

    @property
    def id(self) -> str:
        """The id chatd serves it under: `org/name`, with `:QUANT` when one was asked for."""
        return f"{self.repo_id}:{self.quant}" if self.quant else self.repo_id


def is_hub_id(name: str) -> bool:
    """ORG/NAME[:QUANT] as the Hub spells repo ids (huggingface_hub's own rules: ASCII, no
    leading or trailing '-' or '.', at most 96 characters)."""
    match = _HUB_ID.fullmatch(name)
    try:
        return match is not None and validate_repo_id(match["repo"]) is None
    except HFValidationError:
        return False


@dataclass(frozen=True)
class RemoteFile:
    path: str  # inside the repo, `/`-separated
    size: int


def choose_files(ref: HubRef, files: list[RemoteFile]) -> list[RemoteFile]:
    """The files to fetch for `ref`, with their real names (allow_patterns match case-
    sensitively, so a user's `q4_1` must become the file's `Q4_1`). Raises NoWeights when the
    repo has nothing chatd can load, ModelNotFound when the quantisation asked for is absent."""
    ggufs = [f for f in files if f.path.endswith(".gguf") and not _is_projector(f.path)]
    if ggufs:
        return _one_quantisation(ref, ggufs)
    if ref.quant:
        raise ModelNotFound(f"{ref.repo_id} has no GGUF files, so no quantisation {ref.quant}")
    return _transformers_files(ref, files)


def gguf_quants(files: list[RemoteFile]) -> dict[str, list[RemoteFile]]:
    """The repo's GGUF models by quantisation (upper case), each with all its split parts."""
    groups: dict[str, list[RemoteFile]] = {}
    for f in sorted(files, key=lambda f: f.path):
        stem = _SPLIT.sub("", f.path).removesuffix(".gguf")
        tokens = re.split(r"[-.]", stem.rsplit("/", 1)[-1])
        quant = next((t.upper() for t in reversed(tokens) if _QUANT_TOKEN.match(t)), stem)
        groups.setdefault(quant, []).append(f)
    return groups


def _one_quantisation(ref: HubRef, ggufs: list[RemoteFile]) -> list[RemoteFile]:
    groups = gguf_quants(ggufs)
    if ref.quant:
        if ref.quant not in groups:
            raise ModelNotFound(
                f"{ref.repo_id} has no {ref.quant} GGUF; it has {', '.join(sorted(groups))}"
            )
        return groups[ref.quant]
    if DEFAULT_QUANT in groups:
        return groups[DEFAULT_QUANT]
    return min(groups.values(), key=lambda parts: sum(f.size for f in parts))


def _is_projector(path: str) -> bool:
    """A vision projector (`mmproj-*.gguf`) beside the language model: not a model alone."""
    return "mmproj" in path.rsplit("/", 1)[-1].lower()


def _transformers_files(ref: HubRef, files: list[RemoteFile]) -> list[RemoteFile]:
    top = [f for f in files if "/" not in f.path]
    names = {f.path for f in top}
    if "config.json" not in names:
        raise NoWeights(f"{ref.repo_id} has neither a GGUF file nor a config.json")
    weights = [f for f in top if f.path.endswith(".safetensors")]
    if not weights:
        weights = [f for f in top if f.path.endswith(_PICKLES) and f.path not in _NOT_PYTORCH]
    if not weights:
        raise NoWeights(
            f"{ref.repo_id} has no weights chatd can load (GGUF, safetensors or PyTorch); "
            f"its files: {', '.join(sorted(names))}"
        )
    support = [f for f in top if f.path.endswith(_SUPPORT_SUFFIXES)]
    return sorted({*weights, *support}, key=lambda f: f.path)
