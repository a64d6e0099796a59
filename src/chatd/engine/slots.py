"""KV slots: which are free, and which tokens each one still caches for a later prompt.

A finished sequence leaves its tokens in its slot, and a new prompt feeds the model only what
the slot it takes does not hold already. Which free slot a prompt takes decides what survives:
every chat prompt shares its template's first tokens, so "the longest common prefix" alone
would hand a new conversation the slot of another one it shares a few tokens with, and wipe
that conversation's cache while empty slots wait. As llama-server does
(`--slot-prompt-similarity`), a prompt takes a cached slot only when it keeps at least
MIN_KEPT of what the slot holds; otherwise an empty slot, else the least recently used one.
"""

from __future__ import annotations

MIN_KEPT = 0.1  # share of a slot's cached tokens a prompt must reuse to take that slot


class SlotTable:
    def __init__(self, n_slots: int):
        self._free = set(range(n_slots))
        self._cached: list[list[int]] = [[] for _ in range(n_slots)]
        self._released = [0] * n_slots  # when each slot was last given back (a tick count)
        self._tick = 0

    @property
    def n_free(self) -> int:
        return len(self._free)

    def take(self, prompt: list[int], reusable: int) -> tuple[int, int]:
        """Takes a free slot for the prompt (see the module's docstring); returns it and how
        many prompt tokens (at most `reusable`) it holds already."""
        best, best_len = None, 0
        for slot in sorted(self._free):
            cached = self._cached[slot]
            n = common_prefix(cached, prompt)
            if n > best_len and n >= MIN_KEPT * len(cached):
                best, best_len = slot, n
        if best is None:  # no cache worth keeping: an empty slot, else the least recently used
            best = min(self._free, key=lambda s: (bool(self._cached[s]), self._released[s], s))
            best_len = common_prefix(self._cached[best], prompt)  # overwritten past that anyway
        self._free.remove(best)
        # At least the last prompt token must run again: its logits give the first sample.
        return best, min(best_len, len(prompt) - 1, reusable)

    def cached(self, slot: int) -> list[int]:
        """The tokens the slot's cache holds from its last sequence."""
        return self._cached[slot]

    def release(self, slot: int, cached: list[int]) -> None:
        """Frees the slot, which keeps `cached` (the first tokens of its KV cache) for reuse."""
        self._tick += 1
        self._cached[slot], self._released[slot] = cached, self._tick
        self._free.add(slot)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
