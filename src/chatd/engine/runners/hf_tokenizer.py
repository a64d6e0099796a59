"""A Hugging Face tokenizer seen through the engine's Tokenizer protocol (runners/base.py)."""

from __future__ import annotations

import llguidance.hf


class HFTokenizer:
    def __init__(
        self, tokenizer, n_vocab: int, eos_ids: set[int], chat_template: str | None = None
    ):
        """n_vocab is the model's logits width, which may exceed the tokenizer's own length
        (padded embeddings): ids past the tokenizer are never text and never sampled to text.
        chat_template, when given, replaces the tokenizer's own (a processor's)."""
        self._tok = tokenizer
        self.n_vocab = n_vocab
        known = min(len(tokenizer), n_vocab)
        self.eog = {t for t in eos_ids if t < n_vocab}
        # llguidance knows how each token maps to bytes (byte-level BPE or sentencepiece).
        self.grammar_tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=n_vocab, eos_token=sorted(self.eog) or None
        )
        ll = self.grammar_tokenizer
        self.hidden = {t for t in range(known) if ll.is_special_token(t)} | self.eog
        self.hidden |= set(range(known, n_vocab))
        self.token_bytes = [
            b"" if t in self.hidden else ll.decode_bytes([t]) for t in range(n_vocab)
        ]
        names = tokenizer.convert_ids_to_tokens(list(range(known)))
        self.token_text = [
            name if t in self.hidden else self.token_bytes[t].decode("utf-8", errors="replace")
            for t, name in enumerate(names)
        ] + [f"<unused_{t}>" for t in range(known, n_vocab)]
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        self.bos_token = tokenizer.bos_token or ""
        self.eos_token = tokenizer.eos_token or ""
        # Added tokens that are not special are read as one token either way: not listed.
        self.specials = frozenset(
            t.content for t in tokenizer.added_tokens_decoder.values() if t.special and t.content
        ) | frozenset(tokenizer.all_special_tokens)

    def encode(self, text: str, special: bool = True) -> list[int]:
        # The template wrote any BOS itself.
        return self._tok.encode(text, add_special_tokens=False, split_special_tokens=not special)
