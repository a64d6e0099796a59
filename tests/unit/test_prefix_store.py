"""The prefix store (engine/prefix_store.py): the longest stored prefix of a prompt, entries
covered by others, least recently used out first, and its bound in bytes."""

from __future__ import annotations

from chatd.engine.prefix_store import PrefixStore
from chatd.engine.runners.base import KVState

BLOCK = 4
PER_TOKEN = 10  # bytes a saved token holds here


class Saver:
    """Hands out states named after their tokens, and counts the copies asked for."""

    def __init__(self):
        self.calls = 0

    def __call__(self, tokens: list[int]):
        def save() -> KVState:
            self.calls += 1
            return KVState(len(tokens), len(tokens) * PER_TOKEN, tuple(tokens))

        return save


def store_with(*entries: list[int], max_bytes: int = 10**6) -> tuple[PrefixStore, Saver]:
    store, saver = PrefixStore(max_bytes, block=BLOCK), Saver()
    for tokens in entries:
        store.save(tokens, saver(tokens))
    return store, saver


def found(store: PrefixStore, prompt: list[int], limit: int | None = None):
    match = store.find(prompt, len(prompt) if limit is None else limit)
    return match and (match.state.data, match.n_tokens)


SYSTEM = list(range(100, 110))  # two blocks and a half
A = SYSTEM + [1] * 9
B = SYSTEM + [2] * 9


def test_the_longest_stored_prefix_is_found_into_a_partial_block():
    store, _ = store_with(A, B, SYSTEM[:8])
    assert found(store, A + [5, 6]) == (tuple(A), len(A))
    assert found(store, B[:15] + [7] * 10) == (tuple(B), 15)  # 3 blocks, then 3 of the 4th
    assert found(store, SYSTEM + [3] * 9)[1] == len(SYSTEM)  # the system prompt, of either


def test_a_match_stops_at_the_limit_and_needs_a_whole_block():
    store, _ = store_with(A)
    assert found(store, A, limit=len(A) - 1) == (tuple(A), len(A) - 1)
    assert found(store, A, limit=BLOCK - 1) is None
    assert found(store, [0] + A[1:]) is None  # the first block differs
    assert found(store, [7] * 30) is None


def test_an_entry_another_covers_is_not_kept_twice():
    store, saver = store_with(A)
    store.save(A[:12], saver(A[:12]))  # a prefix of a stored entry: no copy made
    store.save(A, saver(A))
    assert saver.calls == 1 and store.stats().entries == 1
    longer = A + [4] * 8
    store.save(longer, saver(longer))  # extends A: A goes
    stats = store.stats()
    assert (stats.entries, stats.bytes) == (1, len(longer) * PER_TOKEN)
    assert found(store, A + [9] * 4) == (tuple(longer), len(A))


def test_the_least_recently_used_entry_goes_first_when_bytes_run_out():
    first, second, third = ([k] * 8 for k in (1, 2, 3))
    store, saver = store_with(first, second, max_bytes=2 * 8 * PER_TOKEN)
    store.restored(store.find(first, 8))  # first is now the most recently used
    store.save(third, saver(third))
    assert found(store, second) is None
    assert found(store, first) and found(store, third)
    assert store.stats().bytes == 2 * 8 * PER_TOKEN


def test_the_store_never_holds_more_than_its_bytes():
    store, saver = store_with(max_bytes=100)
    for k in range(20):
        tokens = [k] * (4 + k % 5)
        store.save(tokens, saver(tokens))
        assert store.stats().bytes <= 100
    too_big = [99] * 12  # 120 bytes: copied, found too big, not kept
    store.save(too_big, saver(too_big))
    assert found(store, too_big) is None and store.stats().bytes <= 100


def test_a_state_that_is_not_the_prefix_asked_for_is_not_kept():
    store = PrefixStore(10**6, block=BLOCK)
    store.save(A, lambda: KVState(0, 0, ()))  # the runner could not cut the slot at len(A)
    assert found(store, A) is None and store.stats().entries == 0


def test_restores_are_counted():
    store, _ = store_with(A)
    store.restored(store.find(A + [1], len(A)))
    stats = store.stats()
    assert (stats.restores, stats.restored_tokens, stats.entries) == (1, len(A), 1)


def test_zero_bytes_is_no_store():
    store, saver = store_with(A, B, max_bytes=0)
    assert saver.calls == 0 and found(store, A) is None and store.stats().entries == 0
