"""How images enter a transformers VLM, for a batch of rows at different positions.

Two styles exist. Image-token models (LLaVA, Qwen2-VL, SmolVLM, ...) have the processor expand
each image into placeholder tokens whose embeddings are replaced by the vision tower's features;
Qwen2-VL also gives them 3-D rotary positions (M-RoPE). Cross-attention models (Mllama, i.e.
Llama-3.2-Vision) keep one `<|image|>` token and let some layers attend to the vision states,
under a per-token cross-attention mask. Either way the vision tower runs once per request, in
the request's worker thread (`prepare`), not on the scheduler thread.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from chatd.engine.runners.kv_slots import SlotCache
from chatd.engine.types import PromptImages


@dataclass(eq=False, kw_only=True)  # compared by identity: one object per request's images
class VisionPrompt(PromptImages):
    """A prompt's images, processed (the GenerationRequest's `images`)."""

    input_ids: list[int]
    tensors: dict[str, torch.Tensor]  # what the processor gave besides the ids
    # Filled by the runner's adapter (prepare, in the request's worker thread):
    embeds: torch.Tensor | None = None  # [P, hidden] prompt embeddings, image features in place
    positions: torch.Tensor | None = None  # [3, P] M-RoPE positions of the prompt
    rope_delta: int = 0  # later tokens sit at position + rope_delta on every axis
    states: torch.Tensor | None = None  # [images * tiles * patches, hidden], cross-attention
    # Each cross-attention layer's keys and values [heads, vision tokens, dim], once projected.
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def n_prompt(self) -> int:
        return len(self.input_ids)


def _accepted(fn, tensors: dict) -> dict:
    params = inspect.signature(fn).parameters
    return {k: v for k, v in tensors.items() if k in params}


class TextInputs:
    """Models without images, and the fallback for steps where no row carries any."""

    def __init__(self, model, image_token_id: int | None = None):
        self.model = model
        self.image_token_id = image_token_id

    def prepare(self, vision: VisionPrompt) -> None:
        """Run the vision tower on a request's images (once, before it is scheduled)."""

    def inputs(self, rows, ids: torch.Tensor, positions: torch.Tensor) -> dict:
        """The model's inputs for rows of (row, start, n_tokens, VisionPrompt | None); a row's
        n tokens are its last n positions (rows are padded on the left)."""
        return {"input_ids": ids, "position_ids": positions}


class ImageTokenInputs(TextInputs):
    def __init__(self, model, image_token_id: int):
        super().__init__(model, image_token_id)
        inner = getattr(model, "model", model)
        self._rope_index = getattr(inner, "get_rope_index", None)  # M-RoPE models only

    def inputs(self, rows, ids, positions):
        embeds = self.model.get_input_embeddings()(ids)
        if self._rope_index:
            positions = positions[None].repeat(3, 1, 1)
        length = ids.shape[1]
        for r, start, n, vision in rows:
            if vision is None:
                continue
            at = length - n
            k = max(0, min(n, vision.n_prompt - start))  # prompt tokens in this row
            embeds[r, at : at + k] = vision.embeds[start : start + k]
            if self._rope_index:
                positions[:, r, at:] += vision.rope_delta
                positions[:, r, at : at + k] = vision.positions[:, start : start + k]
        return {"inputs_embeds": embeds, "position_ids": positions}

    def prepare(self, vision: VisionPrompt) -> None:
        model, dtype = self.model, self.model.dtype
        device = model.get_input_embeddings().weight.device
        ids = torch.tensor([vision.input_ids], device=device)
        tensors = {
            k: v.to(dtype) if v.is_floating_point() else v for k, v in vision.tensors.items()
        }
        out = model.get_image_features(**_accepted(model.get_image_features, tensors))
        features = getattr(out, "pooler_output", out)
        if isinstance(features, (list, tuple)):
            features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features])
        embeds = model.get_input_embeddings()(ids)[0]
        slots = ids[0] == self.image_token_id
        features = features.reshape(-1, embeds.shape[-1])
        if int(slots.sum()) != features.shape[0]:
            raise ValueError(
                f"the processor made {int(slots.sum())} image tokens but the vision tower "
                f"{features.shape[0]} features"
            )
        embeds[slots] = features.to(embeds.dtype)
        vision.embeds = embeds
        if self._rope_index:
            index_args = {"input_ids": ids, **tensors}
            pos, delta = self._rope_index(**_accepted(self._rope_index, index_args))
            vision.positions, vision.rope_delta = pos[:, 0], int(delta.flatten()[0])


class CrossAttentionInputs(TextInputs):
    """Mllama. A request's first prompt chunk (a forward of its own) passes its vision states,
    and the cache keeps what each cross-attention layer projects from them; later forwards read
    those keys and values back, padded to the batch's most images, instead of projecting the
    vision states again at every step. Each query gets its row of the cross-attention mask
    (tokens past the prompt repeat its last row, as `generate` does)."""

    def __init__(self, model, image_token_id: int | None, cache: SlotCache):
        super().__init__(model, image_token_id)
        self.cache = cache
        # The batch's stacked keys and values, kept while its rows with images stay the same
        # (decoding steps mostly repeat the last one's): (batch, rows and images), stacked.
        self._stack: tuple[tuple, list] | None = None

    def inputs(self, rows, ids, positions):
        out = super().inputs(rows, ids, positions)
        with_images = [row for row in rows if row[3] is not None]
        fresh = [vision for *_, vision in with_images if vision.cross_kv is None]
        if fresh:
            (vision,) = fresh  # a first prompt chunk: the runner gives it a forward of its own
            vision.cross_kv = []
            self.cache.capture_cross(vision.cross_kv)
            out["cross_attention_states"], vision.states = vision.states[None], None
        else:
            self.cache.read_cross(self._stacked(with_images, ids.shape[0]) if with_images else None)
            if not with_images:
                self._stack = None
        if with_images:
            out["cross_attention_mask"] = self._mask(with_images, ids.shape)
        return out

    def _stacked(self, rows, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each cross layer's cached keys and values for the batch, zeros where a row has
        fewer images (or none: its mask is all zeros too)."""
        key = (batch, tuple((r, vision) for r, *_, vision in rows))
        if self._stack is None or self._stack[0] != key:
            self._stack = key, self._stack_anew(rows, batch)
        return self._stack[1]

    def _stack_anew(self, rows, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        longest = max(vision.cross_kv[0][0].shape[1] for *_, vision in rows)
        out = []
        for layer, (k0, _) in enumerate(rows[0][3].cross_kv):
            shape = (batch, k0.shape[0], longest, k0.shape[2])
            keys = k0.new_zeros(shape)
            values = k0.new_zeros(shape)
            for r, *_, vision in rows:
                k, v = vision.cross_kv[layer]
                keys[r, :, : k.shape[1]], values[r, :, : v.shape[1]] = k, v
            out.append((keys, values))
        return out

    def _mask(self, rows, shape) -> torch.Tensor:
        masks = [vision.tensors["cross_attention_mask"][0] for *_, vision in rows]  # [P, img, tile]
        n_images, tiles = max(m.shape[1] for m in masks), masks[0].shape[2]
        device = masks[0].device
        cross = torch.zeros(*shape, n_images, tiles, dtype=torch.long, device=device)
        length = shape[1]
        for (r, start, n, vision), mask in zip(rows, masks, strict=True):
            at = torch.arange(start, start + n, device=device).clamp(max=vision.n_prompt - 1)
            cross[r, length - n :, : mask.shape[1]] = mask[at]
        return cross

    def prepare(self, vision: VisionPrompt) -> None:
        inner, t = self.model.model, vision.tensors
        hidden = inner.vision_model(
            pixel_values=t["pixel_values"].to(self.model.dtype),
            aspect_ratio_ids=t["aspect_ratio_ids"],
            aspect_ratio_mask=t["aspect_ratio_mask"],
        ).last_hidden_state
        states = inner.multi_modal_projector(hidden)
        vision.states = states.reshape(-1, states.shape[-1])


def inputs_for(model, config, cache: SlotCache) -> TextInputs:
    """The adapter for this model's way of taking images (text models: none)."""
    image_token = getattr(config, "image_token_id", None)
    if image_token is None:
        image_token = getattr(config, "image_token_index", None)
    if getattr(config, "model_type", "") == "mllama":
        return CrossAttentionInputs(model, image_token, cache)
    if image_token is not None and hasattr(model, "get_image_features"):
        return ImageTokenInputs(model, image_token)
    return TextInputs(model)
