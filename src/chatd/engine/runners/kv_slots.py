"""The transformers runner's KV cache: a fixed block of positions per slot.

A batch's rows are consecutive slots. Each query carries its own position, writes its keys and
values there, and sees its slot's keys up to that position through an explicit mask, so sequences
at different lengths (and prompt chunks) share one forward. Padding writes to a scratch position.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from chatd.engine.runners.base import KVState


class _Layer:
    """What transformers' modelling code may read of a cache layer: Mllama's cross-attention
    layers read the vision keys and values here when a step brings no vision states."""

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.is_initialized, self.keys, self.values = False, torch.empty(0), torch.empty(0)


class SlotCache(Cache):
    def __init__(self, text_config, n_slots: int, n_ctx: int, dtype, device):
        n_layers = text_config.num_hidden_layers
        cross = set(getattr(text_config, "cross_attention_layers", None) or ())
        heads = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
        head_dim = getattr(text_config, "head_dim", None) or (
            text_config.hidden_size // text_config.num_attention_heads
        )
        shape = (n_slots, heads, n_ctx + 1, head_dim)  # position n_ctx: scratch for padding

        def block(i):
            return None if i in cross else torch.zeros(shape, dtype=dtype, device=device)

        self.keys = [block(i) for i in range(n_layers)]
        self.values = [block(i) for i in range(n_layers)]
        self.scratch = n_ctx
        self._cross = sorted(cross)
        self._capture: list | None = None
        super().__init__(layers=[_Layer() for _ in range(n_layers)])

    def capture_cross(self, into: list) -> None:
        """The next forward brings vision states: keep what each cross layer projects."""
        self.read_cross(None)
        self._capture = into

    def read_cross(self, kv: list[tuple[torch.Tensor, torch.Tensor]] | None) -> None:
        """The next forward's cross-attention keys and values, one pair per cross layer (None:
        no row has images, the layers are skipped)."""
        self._capture = None
        for i, layer in enumerate(self._cross):
            self.layers[layer].clear()
            if kv is not None:
                self.layers[layer].keys, self.layers[layer].values = kv[i]
                self.layers[layer].is_initialized = True

    def bind(self, rows: slice, write_pos: torch.Tensor, kv_len: int) -> None:
        """The next forward's rows (slots), where each query token writes, and how many
        positions its attention reads."""
        self._rows, self._pos, self._kv_len = rows, write_pos, kv_len
        self._batch = torch.arange(write_pos.shape[0], device=write_pos.device)[:, None]

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        if self.keys[layer_idx] is None:  # cross-attention, from this step's vision states
            if self._capture is not None:
                self._capture.append((key_states[0], value_states[0]))
            return key_states, value_states
        keys = self.keys[layer_idx][self._rows]
        values = self.values[layer_idx][self._rows]
        keys[self._batch, :, self._pos] = key_states.transpose(1, 2)
        values[self._batch, :, self._pos] = value_states.transpose(1, 2)
        return keys[:, :, : self._kv_len], values[:, :, : self._kv_len]

    def save(self, slot: int, n_tokens: int) -> KVState:
        """The slot's first n_tokens positions of every layer, copied to host memory."""
        rows = [
            t[slot, :, :n_tokens].to("cpu", copy=True)
            for t in (*self.keys, *self.values)
            if t is not None
        ]
        return KVState(n_tokens, sum(r.numel() * r.element_size() for r in rows), rows)

    def restore(self, slot: int, state: KVState) -> int:
        blocks = [t for t in (*self.keys, *self.values) if t is not None]
        for block, saved in zip(blocks, state.data, strict=True):
            block[slot, :, : state.n_tokens].copy_(saved)
        return state.n_tokens

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # unused: every forward passes its positions


def causal_mask(positions: torch.Tensor, kv_len: int, dtype, window: int | None = None):
    """Additive mask [B, 1, L, kv_len]: a query sees its slot's keys up to its own position
    (and within the sliding window, if any). Padding queries (position 0) see key 0 only."""
    keys = torch.arange(kv_len, device=positions.device)
    query = positions[..., None]
    visible = keys <= query
    if window:
        visible &= keys > query - window
    mask = torch.zeros(visible.shape, dtype=dtype, device=positions.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)[:, None]
