"""GGUF models through llama.cpp's low-level API: one context, one KV cache, many sequences.

The KV cache is split per sequence (`kv_unified=false`): each slot owns `n_ctx` tokens, which
was measured faster than a unified cache here and keeps outputs independent of the batch.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable

import llama_cpp
import numpy as np
from llguidance.llamacpp import lltokenizer_from_vocab

from chatd.engine.runners.base import BatchItem, KVState, token_budget

# llama.cpp logs every tensor on load to stderr unless told otherwise.
logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


class LlamaCppTokenizer:
    def __init__(self, model):
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        vocab = self._vocab
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self.eog = {t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)}
        self.hidden = {t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_control(vocab, t)}
        self.hidden |= self.eog
        self.token_bytes = [
            b"" if t in self.hidden else self._piece(t, special=False) for t in range(self.n_vocab)
        ]
        self.token_text = [
            self._piece(t, special=True).decode("utf-8", errors="replace")
            for t in range(self.n_vocab)
        ]
        self.bos_token = self._special_text(llama_cpp.llama_vocab_bos(vocab))
        self.eos_token = self._special_text(llama_cpp.llama_vocab_eos(vocab))
        template = llama_cpp.llama_model_chat_template(model, None)
        self.chat_template = template.decode("utf-8") if template else None
        # What llama_tokenize reads as one token only with parse_special (llama.cpp's own
        # rule: user-defined tokens are read as such either way).
        parsed = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
        self.specials = frozenset(
            text
            for t in range(self.n_vocab)
            if llama_cpp.llama_vocab_get_attr(vocab, t) & parsed
            and (text := self._piece(t, special=True).decode("utf-8", errors="replace"))
        )
        # llguidance's view of the vocabulary, for grammars (a quarter second to build).
        self.grammar_tokenizer = lltokenizer_from_vocab(vocab, eos_token=sorted(self.eog))

    def encode(self, text: str, special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, capacity, False, special)
        if n < 0:  # cannot happen with a token per byte and then some; be safe anyway
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), buf, capacity, False, special
            )
        return list(buf[:n])

    def _piece(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[: max(n, 0)]

    def _special_text(self, token: int) -> str:
        return self.token_text[token] if 0 <= token < self.n_vocab else ""


class LlamaCppRunner:
    name = "llamacpp"
    vision = False

    def __init__(
        self,
        path: str,
        n_slots: int = 8,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        max_batch_tokens: int = 512,
        progress: Callable[[float], None] | None = None,
    ):
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        if progress is not None:
            # ctypes must keep the callback alive as long as llama.cpp may call it.
            self._progress_cb = llama_cpp.llama_progress_callback(
                lambda value, _user: progress(value) or True
            )
            mparams.progress_callback = self._progress_cb
        self.model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.n_slots = n_slots
        self.n_ctx = n_ctx
        self.max_batch_tokens = token_budget(max_batch_tokens, n_slots)
        threads = n_threads or os.cpu_count() or 1
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx * n_slots
        cparams.n_batch = cparams.n_ubatch = self.max_batch_tokens
        cparams.n_seq_max = n_slots
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.kv_unified = False
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise RuntimeError(f"llama.cpp could not create a context for {path}")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.tokenizer = LlamaCppTokenizer(self.model)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self.model)
        self._batch = llama_cpp.llama_batch_init(self.max_batch_tokens, 0, 1)
        self.memory_bytes = llama_cpp.llama_model_size(self.model) + self._kv_bytes()

    def _kv_bytes(self) -> int:
        """The KV cache: every layer keeps a key and a value (f16) per head per position."""
        m = self.model
        head_dim = llama_cpp.llama_model_n_embd(m) // llama_cpp.llama_model_n_head(m)
        per_position = llama_cpp.llama_model_n_head_kv(m) * head_dim * 2 * 2
        return llama_cpp.llama_model_n_layer(m) * self.n_ctx * self.n_slots * per_position

    def forward(self, items: list[BatchItem]) -> np.ndarray:
        batch = self._batch
        n = 0
        outputs = []
        for item in items:
            for j, token in enumerate(item.tokens):
                batch.token[n] = token
                batch.pos[n] = item.start + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = item.slot
                batch.logits[n] = False
                n += 1
            if item.want_logits:
                for i in range(n - item.n_logits, n):
                    batch.logits[i] = True
                outputs.extend(range(n - item.n_logits, n))
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        # The rows of the tokens that asked for logits, in batch order, in llama.cpp's own buffer:
        # read in place (no copy), valid until the next forward.
        logits = llama_cpp.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(logits, (len(outputs), self.tokenizer.n_vocab))

    def truncate(self, slot: int, keep: int) -> int:
        if llama_cpp.llama_memory_seq_rm(self.memory, slot, keep, -1):
            return keep
        llama_cpp.llama_memory_seq_rm(self.memory, slot, -1, -1)  # whole removal never fails
        return 0

    def save_prefix(self, slot: int, n_tokens: int) -> KVState:
        # The sequence's state is all it holds: first drop what lies past the prefix.
        n_tokens = self.truncate(slot, n_tokens)
        size = llama_cpp.llama_state_seq_get_size(self.ctx, slot)
        data = (ctypes.c_uint8 * size).from_buffer(bytearray(size))
        written = llama_cpp.llama_state_seq_get_data(self.ctx, data, size, slot)
        return KVState(n_tokens, written, data)

    def restore_prefix(self, slot: int, state: KVState) -> int:
        # llama.cpp empties the sequence first, and again if the state does not fit.
        read = llama_cpp.llama_state_seq_set_data(self.ctx, state.data, state.nbytes, slot)
        return state.n_tokens if read else 0

    def close(self) -> None:
        if self.ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self.ctx)
            llama_cpp.llama_model_free(self.model)
            self.ctx = self.model = None
