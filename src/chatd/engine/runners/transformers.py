"""Hugging Face model folders (text and vision-language) through transformers and PyTorch.

Breadth over speed: any architecture transformers knows, on the CPU or CUDA. The scheduler is
the same as llama.cpp's; one `forward` call takes every decoding sequence in one model forward
(rows = slots of kv_slots.SlotCache, each at its own position) and each prompt chunk in one
forward of its own. A GGUF loads too, dequantised (slow to load, a fallback).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
from transformers.models.auto.processing_auto import (
    PROCESSOR_MAPPING_NAMES,
    processor_class_from_name,
)

from chatd.engine.runners.base import BatchItem, KVState, token_budget
from chatd.engine.runners.hf_tokenizer import HFTokenizer
from chatd.engine.runners.kv_slots import SlotCache, causal_mask
from chatd.engine.runners.vision import VisionPrompt, inputs_for


class TransformersRunner:
    name = "transformers"

    def __init__(
        self,
        path: str | Path,
        n_slots: int = 8,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        max_batch_tokens: int = 512,
        device: str = "auto",
        dtype: str = "auto",
        progress: Callable[[float], None] | None = None,
    ):
        progress = progress or (lambda _value: None)
        path = Path(path)
        # A GGUF file is read from its folder by name, and dequantised.
        where, gguf = (path.parent, {"gguf_file": path.name}) if path.is_file() else (path, {})
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype == "auto":  # on the CPU, float32 keeps outputs close to the reference ones
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.dtype = getattr(torch, dtype)
        if self.device.type == "cpu":
            torch.set_num_threads(n_threads or os.cpu_count() or 1)
        config = AutoConfig.from_pretrained(where, **gguf)
        self.vision = config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        progress(0.05)
        auto = AutoModelForImageTextToText if self.vision else AutoModelForCausalLM
        # Straight onto the device (a GPU load does not pass through host memory first).
        model = auto.from_pretrained(where, dtype=self.dtype, device_map=str(self.device), **gguf)
        self.model = model.eval()
        progress(0.9)
        self.processor = _load_processor(where, config) if self.vision else None
        hf_tok = self.processor.tokenizer if self.processor else None
        hf_tok = hf_tok or AutoTokenizer.from_pretrained(where, **gguf)
        n_vocab = self.model.get_output_embeddings().weight.shape[0]
        # A processor's template places the images: it comes before the tokenizer's own.
        template = getattr(self.processor, "chat_template", None)
        self.tokenizer = HFTokenizer(hf_tok, n_vocab, _eos_ids(self.model, hf_tok), template)
        text_config = config.get_text_config()
        limit = getattr(text_config, "max_position_embeddings", None) or n_ctx
        self.n_slots = n_slots
        self.n_ctx = min(n_ctx, limit)
        self.max_batch_tokens = token_budget(max_batch_tokens, n_slots)
        self.cache = SlotCache(text_config, n_slots, self.n_ctx, self.dtype, self.device)
        layer_types = getattr(text_config, "layer_types", None) or ()
        self._window = text_config.sliding_window if "sliding_attention" in layer_types else None
        self._inputs = inputs_for(self.model, config, self.cache)
        tensors = [*self.model.parameters(), *self.model.buffers(), *self.cache.keys]
        tensors += self.cache.values
        self.memory_bytes = sum(t.numel() * t.element_size() for t in tensors if t is not None)
        progress(1.0)

    # -- images ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_images(self, text: str, images: list) -> tuple[list[int], VisionPrompt]:
        """The prompt's tokens, image placeholders expanded by the processor, and its images
        through the vision tower. The caller runs it off the event loop (and off the scheduler
        thread: the model's weights are only read, by both)."""
        out = self.processor(
            text=[text], images=[images], return_tensors="pt", add_special_tokens=False
        )
        ids = out.pop("input_ids")[0].tolist()
        out.pop("attention_mask", None)
        tensors = {k: v.to(self.device) for k, v in out.items() if isinstance(v, torch.Tensor)}
        image_id = self._inputs.image_token_id
        first = ids.index(image_id) if image_id in ids else len(ids)
        vision = VisionPrompt(input_ids=ids, tensors=tensors, reusable=first)
        self._inputs.prepare(vision)
        return ids, vision

    # -- the Runner protocol --------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, items: list[BatchItem]) -> np.ndarray:
        decoding = [item for item in items if not _prompt_chunk(item)]
        rows = self._run(decoding) if decoding else {}
        for group in _pack([item for item in items if _prompt_chunk(item)]):
            rows.update(self._run(group))
        wanted = [rows[item.slot][-item.n_logits :] for item in items if item.want_logits]
        if not wanted:
            return np.empty((0, self.tokenizer.n_vocab), dtype=np.float32)
        return torch.cat(wanted).float().cpu().numpy()

    def _run(self, items: list[BatchItem]) -> dict[int, torch.Tensor]:
        """One model forward over the consecutive slots these items occupy. Rows are padded on
        the left, so that every row's last positions are its last tokens: each slot's logits
        for as many last positions as any item wants."""
        lo = min(item.slot for item in items)
        hi = max(item.slot for item in items) + 1
        length = max(len(item.tokens) for item in items)
        ids = torch.zeros(hi - lo, length, dtype=torch.long)
        positions = torch.zeros(hi - lo, length, dtype=torch.long)
        writes = torch.full((hi - lo, length), self.cache.scratch, dtype=torch.long)
        rows = []
        for item in items:
            r, n = item.slot - lo, len(item.tokens)
            ids[r, length - n :] = torch.tensor(item.tokens)
            at = torch.arange(item.start, item.start + n)
            positions[r, length - n :] = writes[r, length - n :] = at
            rows.append((r, item.start, n, item.images))
        ids, positions, writes = (t.to(self.device) for t in (ids, positions, writes))
        kv_len = max(item.start + len(item.tokens) for item in items)
        self.cache.bind(slice(lo, hi), writes, kv_len)
        inputs = self._inputs.inputs(rows, ids, positions)
        out = self.model(
            **inputs,
            attention_mask=self._mask(positions, kv_len),
            cache=self.cache,
            use_cache=True,
            logits_to_keep=max(item.n_logits for item in items),
        )
        return {item.slot: out.logits[item.slot - lo] for item in items}

    def _mask(self, positions: torch.Tensor, kv_len: int):
        full = causal_mask(positions, kv_len, self.dtype)
        if self._window is None:
            return full
        sliding = causal_mask(positions, kv_len, self.dtype, self._window)
        return {"full_attention": full, "sliding_attention": sliding}

    def truncate(self, slot: int, keep: int) -> int:
        return keep  # positions past `keep` are overwritten before they are read again

    def save_prefix(self, slot: int, n_tokens: int) -> KVState:
        return self.cache.save(slot, n_tokens)

    def restore_prefix(self, slot: int, state: KVState) -> int:
        return self.cache.restore(slot, state)

    def close(self) -> None:
        self.model = self.cache = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _pack(chunks: list[BatchItem]) -> list[list[BatchItem]]:
    """Prompt chunks as forwards: text chunks of neighbouring slots share one while the padding
    stays under the real tokens (a forward spans the slots between its rows and is as long as
    its longest chunk); a chunk with images has one of its own."""
    groups: list[list[BatchItem]] = []
    group: list[BatchItem] = []
    for item in sorted((c for c in chunks if c.images is None), key=lambda c: c.slot):
        trial = [*group, item]
        span = trial[-1].slot - trial[0].slot + 1
        real = sum(len(c.tokens) for c in trial)
        if group and span * max(len(c.tokens) for c in trial) > 2 * real:
            groups.append(group)
            trial = [item]
        group = trial
    if group:
        groups.append(group)
    return groups + [[c] for c in chunks if c.images is not None]


def _prompt_chunk(item: BatchItem) -> bool:
    """Several prompt tokens, or any piece of a prompt with images (whose first forward
    brings the vision states). A decoding token with a draft behind it (logits for each of
    them) decodes with the others."""
    in_prompt = item.images is not None and item.start < item.images.n_prompt
    return len(item.tokens) > item.n_logits or in_prompt


def _load_processor(where: Path, config):
    """The model's processor. Some (Qwen2-VL's) also handle video, through torchvision, which
    may be missing (PyPI's does not import beside the CPU build of torch): then the processor
    is put together from its image processor and tokenizer, without the video part."""
    try:
        return AutoProcessor.from_pretrained(where)
    except ImportError as exc:
        if "torchvision" not in str(exc).lower():
            raise
    cls = processor_class_from_name(PROCESSOR_MAPPING_NAMES[config.model_type])

    class ImagesOnly(cls):
        def check_argument_for_proper_class(self, name, arg):
            return (
                None
                if name == "video_processor"
                else super().check_argument_for_proper_class(name, arg)
            )

    tokenizer = AutoTokenizer.from_pretrained(where)
    return ImagesOnly(
        image_processor=AutoImageProcessor.from_pretrained(where),
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=tokenizer.chat_template,
    )


def _eos_ids(model, tokenizer) -> set[int]:
    """End-of-generation tokens: the generation config's (often several) and the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
