"""The asyncio face of the engine through a fake runner: with its scheduler thread, and stepped
by hand (start=False) where a test needs to know exactly what one step did."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from chatd.engine.constraints import GrammarError, regex_grammar
from chatd.engine.engine import Engine, Generation
from chatd.engine.types import GenerationRequest, Grammar, Load, SamplingParams, TokenEvent
from tests.unit.fake_runner import EOS, TOKENIZER, FakeRunner

GREEDY = SamplingParams(temperature=0)
DEADLINE = 10  # seconds: only ever reached when something is broken
_ids = itertools.count()


def request(prompt: str, max_tokens: int, sampling: SamplingParams = GREEDY, **kw):
    return GenerationRequest(
        f"req-{next(_ids)}", TOKENIZER.encode(prompt), sampling, max_tokens, **kw
    )


async def collect(generation: Generation) -> list[TokenEvent]:
    async def drain():
        return [event async for event in generation]

    return await asyncio.wait_for(drain(), DEADLINE)


@pytest.fixture
def engine():
    engine = Engine(FakeRunner(n_slots=1))
    yield engine
    engine.close()


def test_a_request_streams_its_events_from_the_scheduler_thread(engine):
    async def main():
        return await collect(engine.submit(request("abc", max_tokens=3)))

    events = asyncio.run(main())

    assert [e.text for e in events] == ["d", "e", "f"]
    assert [e.finish_reason for e in events] == [None, None, "length"]
    assert (events[-1].prompt_tokens, events[-1].completion_tokens) == (3, 3)


def test_closing_a_generation_aborts_it_and_its_slot_serves_the_next():
    # One slot, and a sequence that would run for a million tokens: the next request can only
    # finish if closing the first one aborted it.
    engine = Engine(FakeRunner(n_slots=1, n_ctx=2_000_000))
    endless = SamplingParams(temperature=0, logit_bias={EOS: -100.0})

    async def main():
        first = engine.submit(request("0", max_tokens=1_000_000, sampling=endless))
        head = [await asyncio.wait_for(anext(first), DEADLINE) for _ in range(2)]
        await first.aclose()
        second = await collect(engine.submit(request("abc", max_tokens=2)))
        return head, await collect(first), second

    try:
        head, rest, second = asyncio.run(main())
    finally:
        engine.close()

    assert [e.text for e in head] == ["1", "2"]
    assert rest == []  # a closed generation yields nothing more
    assert [e.text for e in second] == ["d", "e"]
    assert engine.load() == Load(running=0, waiting=0)


def test_load_counts_the_running_and_those_waiting_for_a_slot():
    engine = Engine(FakeRunner(n_slots=1), start=False)

    async def main():
        generations = [engine.submit(request(p, max_tokens=5)) for p in ("a", "k", "u")]
        loads = [engine.load()]
        engine.step()
        loads.append(engine.load())
        generations[2].close()
        engine.step()
        loads.append(engine.load())
        return loads

    assert asyncio.run(main()) == [Load(0, 2), Load(1, 2), Load(1, 1)]
    engine.close()  # never started: nothing to stop


def test_a_stepped_engine_delivers_each_steps_events_to_the_generation():
    runner = FakeRunner(n_slots=1)
    engine = Engine(runner, start=False)

    async def main():
        generation = engine.submit(request("abc", max_tokens=2))
        engine.step()
        first = await asyncio.wait_for(anext(generation), DEADLINE)
        engine.step()
        return first, await collect(generation)

    first, rest = asyncio.run(main())
    engine.close()

    assert first.text == "d" and [e.text for e in rest] == ["e"]
    assert len(runner.calls) == 2 and runner.closed


def test_the_observer_sees_each_step_and_token_and_the_finish():
    engine = Engine(FakeRunner(n_slots=2), start=False)
    seen: list[tuple] = []

    class Recorder:
        def first_token(self, seconds: float) -> None:
            seen.append(("first",))

        def next_token(self, seconds: float) -> None:
            seen.append(("next",))

        def finished(self, prompt_tokens: int, completion_tokens: int) -> None:
            seen.append(("finished", prompt_tokens, completion_tokens))

        def step(self, sequences: int) -> None:
            seen.append(("step", sequences))

    engine.observer = Recorder()

    async def main():
        one = engine.submit(request("abc", max_tokens=2))
        two = engine.submit(request("k", max_tokens=1))
        engine.step()
        engine.step()
        return await collect(one), await collect(two)

    asyncio.run(main())

    assert seen == [
        ("step", 2),
        ("step", 1),
        ("first",),
        ("next",),
        ("finished", 3, 2),
        ("first",),
        ("finished", 1, 1),
    ]


def test_a_request_with_a_grammar_follows_it(engine):
    digits = Grammar(regex_grammar("[0-9]{3}"))

    async def main():
        return await collect(engine.submit(request("abc", max_tokens=10, grammar=digits)))

    events = asyncio.run(main())

    assert "".join(e.text for e in events) == "012"
    assert events[-1].finish_reason == "stop"


def test_check_refuses_a_grammar_that_does_not_compile(engine):
    with pytest.raises(GrammarError, match="unclosed group"):
        engine.check(Grammar(regex_grammar("(")))
    engine.check(Grammar(regex_grammar("[0-9]+")))
