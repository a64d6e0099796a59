"""KV slots: which are free, and which tokens each one still caches for a later prompt.

A finished sequence leaves its tokens in its slot; a new prompt takes the free slot whose
cached tokens share the longest prefix with it, and only the rest is fed to the model.
"""

from __future__ import annotations


class SlotTable:
    def __init__(self, n_slots: int):
        self._free = set(range(n_slots))
        self._cached: list[list[int]] = [[] for _ in range(n_slots)]

    @property
    def n_free(self) -> int:
        return len(self._free)

    def take(self, prompt: list[int], reusable: int) -> tuple[int, int]:
        """Takes the free slot whose cached tokens share the longest prefix (up to `reusable`
        tokens) with the prompt; returns it and how many prompt tokens it holds already."""
        best, best_len = min(self._free), 0
        for slot in sorted(self._free):
            n = _common_prefix(self._cached[slot], prompt)
            if n > best_len:
                best, best_len = slot, n
        self._free.remove(best)
        # At least the last prompt token must run again: its logits give the first sample.
        return best, min(best_len, len(prompt) - 1, reusable)

    def release(self, slot: int, cached: list[int]) -> None:
        """Frees the slot, which keeps `cached` (the first tokens of its KV cache) for reuse."""
        self._cached[slot] = cached
        self._free.add(slot)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
