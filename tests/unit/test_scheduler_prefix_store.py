"""The scheduler with a prefix store, stepped by hand through the fake runner: a slot's cache is
saved before another prompt overwrites it, and restored for a prompt that begins with it."""

from __future__ import annotations

import pytest

from chatd.engine.engine import Engine
from chatd.engine.prefix_store import PrefixStore
from chatd.engine.scheduler import Scheduler
from tests.unit.fake_runner import FakeRunner
from tests.unit.test_scheduler import of, run_until_idle, submit, texts

SYSTEM = "You answer in bytes. "  # 21 tokens, shared by both conversations
FIRST = SYSTEM + "A asks: k"  # answers "lmno"; the slot then holds FIRST + "lmn"
OTHER = SYSTEM + "B asks something else: u"
NEXT = FIRST + "lmno" + " then? a"  # A's next turn: its history, a new question


def conversation(scheduler: Scheduler) -> list:
    """A's turn, B's turn in the only slot, A's next turn: the last one's sequence and events."""
    for prompt in (FIRST, OTHER):
        submit(scheduler, prompt, max_tokens=4)
        run_until_idle(scheduler)
    seq = submit(scheduler, NEXT, max_tokens=4)
    return [seq, of(run_until_idle(scheduler), seq)]


def store_and_runner() -> tuple[Scheduler, FakeRunner]:
    runner = FakeRunner(n_slots=1, n_ctx=256, max_batch_tokens=64)
    return Scheduler(runner, PrefixStore(10**6, block=4)), runner


def test_a_turn_whose_slot_was_taken_gets_its_history_back_from_the_store():
    scheduler, runner = store_and_runner()
    seq, events = conversation(scheduler)

    held = len(FIRST) + 3  # its prompt and the answer's first three tokens (the last never ran)
    assert runner.restores == [(0, held)]
    prefill = runner.calls[-4][0]  # then three decoding steps
    assert prefill[:3] == (0, held, NEXT[held:])  # it starts past what was restored
    assert (seq.n_reused, events[-1].cached_tokens) == (held, held)
    stats = scheduler.prefix_store.stats()
    assert (stats.restores, stats.restored_tokens) == (1, held)
    assert stats.entries == 2  # A's, and B's, saved when A's next turn took the slot

    plain = Scheduler(FakeRunner(n_slots=1, n_ctx=256, max_batch_tokens=64))
    without, plain_events = conversation(plain)
    assert without.n_reused == len(SYSTEM)  # without the store: only what B shared
    assert texts(events) == texts(plain_events)


def test_nothing_is_restored_where_the_slot_holds_as_much():
    scheduler, runner = store_and_runner()
    for prompt in (FIRST, OTHER, OTHER + "vwxy then? a"):
        submit(scheduler, prompt, max_tokens=4)
        run_until_idle(scheduler)
    assert runner.restores == []


def test_a_failing_restore_prefills_the_whole_prompt(monkeypatch):
    scheduler, runner = store_and_runner()

    def broken(slot, state):
        raise RuntimeError("no room")

    monkeypatch.setattr(runner, "restore_prefix", broken)
    seq, events = conversation(scheduler)
    assert seq.n_reused == 0 and runner.calls[-4][0][:3] == (0, 0, NEXT)
    assert texts(events) == list("bcde")


@pytest.mark.parametrize("size", [0, 4096])
def test_the_engine_has_a_store_only_when_given_bytes(size):
    engine = Engine(FakeRunner(), start=False, prefix_cache_bytes=size)
    stats = engine.prefix_stats()
    assert (stats is None) == (size == 0)
    assert stats is None or (stats.entries, stats.bytes) == (0, 0)
