"""The prefix store: KV states that slots had to give up, kept in host memory, found by prefix.

A slot keeps its last sequence's tokens for the next prompt (slots.py), but only until another
prompt takes it. Just before that, the scheduler saves the slot's KV state here (a copy in host
memory, `Runner.save_prefix`); a later prompt that begins with a stored one gets it restored into
its slot (`Runner.restore_prefix`) and prefills only the rest. That is a conversation's next turn
after other conversations took its slot, or a system prompt many conversations share. (llama-server
does the same with its `--cache-ram`.)

Entries are found through a chain of block hashes: a prompt's first BLOCK tokens hash to h1, the
next BLOCK tokens with h1 to h2, and so on, and every entry is indexed under each hash of its own
chain. The longest stored prefix of a prompt is the deepest of its hashes the index holds (one
dict look-up per block), extended token by token into the entries' next block. The store is
bounded in bytes and evicts the least recently used entry first; an entry that a newer one
extends is dropped (the newer one serves every prompt the older would).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from chatd.engine.runners.base import KVState
from chatd.engine.slots import common_prefix

BLOCK = 32  # tokens per hashed block: the granularity of a match


@dataclass(frozen=True)
class PrefixStats:
    """What the store holds and has done, for /metrics."""

    bytes: int
    entries: int
    restores: int  # prompts that got a stored prefix restored
    restored_tokens: int  # prompt tokens those restores supplied


@dataclass(eq=False)  # hashed by identity: a key of the index's sets
class _Entry:
    tokens: list[int]
    chain: list[int]  # the hash of each of its full blocks, chained
    state: KVState


@dataclass(frozen=True)
class Match:
    """A stored state whose first `n_tokens` are a prompt's first tokens."""

    state: KVState
    n_tokens: int
    entry: _Entry


class PrefixStore:
    def __init__(self, max_bytes: int, block: int = BLOCK):
        self.max_bytes, self.block = max_bytes, block
        self._entries: OrderedDict[_Entry, None] = OrderedDict()  # least recently used first
        self._index: dict[int, dict[_Entry, None]] = {}  # chain hash -> entries through it
        self._bytes = self._restores = self._restored_tokens = 0

    def stats(self) -> PrefixStats:
        return PrefixStats(self._bytes, len(self._entries), self._restores, self._restored_tokens)

    def save(self, tokens: list[int], saver: Callable[[], KVState]) -> None:
        """Keeps the state `saver` copies out (of a slot holding `tokens`), unless a stored entry
        covers it already or it could never fit. Shorter than a block: not worth a look-up."""
        if len(tokens) < self.block or not self.max_bytes:
            return
        chain = self._chain(tokens)
        for entry in self._index.get(chain[-1], ()):
            if entry.tokens[: len(tokens)] == tokens:  # stored already, or a longer one
                self._entries.move_to_end(entry)
                return
        state = saver()
        if state.n_tokens != len(tokens) or state.nbytes > self.max_bytes:
            return  # a runner that could not cut the slot at the prefix; or too big ever to fit
        self._remove(self._prefixes_of(tokens, chain))
        while self._bytes + state.nbytes > self.max_bytes:
            self._remove([next(iter(self._entries))])
        entry = _Entry(list(tokens), chain, state)
        self._entries[entry] = None
        for h in chain:
            self._index.setdefault(h, {})[entry] = None
        self._bytes += state.nbytes

    def find(self, prompt: list[int], limit: int) -> Match | None:
        """The stored entry sharing the most of the prompt's first `limit` tokens (at least a
        block), and how many it shares."""
        tokens = prompt[:limit]
        holders: Iterable[_Entry] = ()
        depth = 0
        for h in self._chain(tokens):
            if h not in self._index:
                break
            holders, depth = self._index[h], depth + 1
        if not depth:
            return None
        d = depth * self.block
        rest = tokens[d : d + self.block]  # the next block: matched by none in full
        best, best_n = None, 0
        for entry in holders:
            if entry.tokens[:d] == tokens[:d]:  # not a hash collision
                n = d + common_prefix(entry.tokens[d : d + self.block], rest)
                if n > best_n:
                    best, best_n = entry, n
        return best and Match(best.state, best_n, best)

    def restored(self, match: Match) -> None:
        """A match was restored into a slot: count it, and keep its entry longest."""
        if match.entry in self._entries:
            self._entries.move_to_end(match.entry)
        self._restores += 1
        self._restored_tokens += match.n_tokens

    def _chain(self, tokens: list[int]) -> list[int]:
        chain, h = [], 0
        for start in range(0, len(tokens) - self.block + 1, self.block):
            h = hash((h, tuple(tokens[start : start + self.block])))
            chain.append(h)
        return chain

    def _prefixes_of(self, tokens: list[int], chain: list[int]) -> list[_Entry]:
        """The stored entries that `tokens` extends (each ends in a block of its chain)."""
        found = (
            entry
            for depth, h in enumerate(chain, 1)
            for entry in self._index.get(h, ())
            if len(entry.chain) == depth and tokens[: len(entry.tokens)] == entry.tokens
        )
        return list(dict.fromkeys(found))  # once each, even where two hashes collide

    def _remove(self, entries: list[_Entry]) -> None:
        for entry in entries:
            del self._entries[entry]
            self._bytes -= entry.state.nbytes
            for h in entry.chain:
                holders = self._index[h]
                del holders[entry]
                if not holders:
                    del self._index[h]
