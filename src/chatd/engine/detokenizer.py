"""Incremental detokenizing: O(1) work per token, never a broken multi-byte character.

Tokens are byte strings (byte-level BPE splits characters across tokens), so the text comes
from an incremental UTF-8 decoder that holds an incomplete character until its last byte.
"""

from __future__ import annotations

import codecs


class Detokenizer:
    def __init__(self, token_bytes: list[bytes], hidden: set[int]):
        self._token_bytes = token_bytes
        self._hidden = hidden  # control tokens (end of turn, ...) are never shown as text
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token: int) -> str:
        if token in self._hidden:
            return ""
        return self._decoder.decode(self._token_bytes[token])

    def flush(self) -> str:
        """What is left at the end: an incomplete character becomes U+FFFD."""
        return self._decoder.decode(b"", final=True)
