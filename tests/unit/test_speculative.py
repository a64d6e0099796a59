"""Speculative decoding through the scheduler, with a fake model whose next token depends on
its last two: n-gram drafts are sometimes right and sometimes wrong, and every output must
be the one the scheduler gives without drafting, token for token and event for event."""

from __future__ import annotations

import asyncio
import random
import re

import pytest

from chatd.engine.constraints import regex_grammar
from chatd.engine.scheduler import Scheduler
from chatd.engine.speculative import Drafter, Speculation
from chatd.engine.types import Grammar, SamplingParams
from tests.unit.fake_runner import EOS, FakeRunner, favoured, text_of
from tests.unit.test_scheduler import of, submit


def context_rule(tokens: list[int]) -> int:
    """The next byte from the last two: a few letters, now and then a '.' that ends. Drafts
    found in the output are right; those found in the (random) prompt only by chance."""
    if tokens[-1] == ord("."):
        return EOS
    b, c = ([0, 0] + tokens)[-2:]
    h = (c * 7 + b * 3) % 29
    return ord(".") if h == 0 else ord("a") + h % 5


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        head = "".join(rng.choice("abcde") for _ in range(rng.randint(3, 12)))
        out.append(head * rng.randint(1, 3))  # repeats: the drafter has something to find
    return out


def generate(speculative: bool, requests: list[dict], n_slots: int = 1, rule=context_rule):
    """Every request run to its end (all submitted at once): each one's events as
    (text, finish_reason, completion_tokens), its tokens, and the scheduler."""
    runner = FakeRunner(n_slots=n_slots, n_ctx=160, max_batch_tokens=32, rule=rule)
    # Positions that cost nothing: every row drafts all it can, right or wrong.
    scheduler = Scheduler(runner, speculation=Speculation(0.0) if speculative else None)
    seqs = [submit(scheduler, **request) for request in requests]
    events = []
    for _ in range(500):
        if not scheduler.has_work():
            break
        events += scheduler.step()
        for seq in scheduler.running:  # the fake KV cache holds exactly the cached tokens
            assert runner.cache[seq.slot] == seq.tokens[: seq.n_cached]
    else:
        raise AssertionError("still busy")
    outputs = [
        [(e.text, e.finish_reason, e.completion_tokens, e.error) for e in of(events, s)]
        for s in seqs
    ]
    return outputs, [s.tokens for s in seqs], scheduler


# -- the drafter --------------------------------------------------------------------------------


def test_the_drafter_proposes_what_followed_the_latest_occurrence_of_the_longest_suffix():
    drafter = Drafter()
    tokens = list(b"xabQRSTabcUVWab")
    # "ab" last came before "cUVW" (the 3-gram "Wab" never did): its latest occurrence wins,
    # and the draft runs on to the end of the sequence.
    assert drafter.propose(tokens, limit=8) == list(b"cUVWab")
    tokens += list(b"cU")  # "bcU" matched as a 3-gram: it was followed by "VWab"
    assert drafter.propose(tokens, limit=2) == list(b"VW")
    assert drafter.propose(list(b"abcdefg"), limit=8) == []  # fresh drafter, nothing repeats
    assert Drafter().propose(tokens, limit=0) == []


def test_acceptance_follows_the_record_and_fades_back_to_the_prior():
    drafter = Drafter()
    prior = drafter.acceptance
    for _ in range(5):
        drafter.update(4, 4)
    assert drafter.acceptance > 0.9
    for _ in range(20):
        drafter.update(4, 0)
    assert drafter.acceptance < 0.3
    for _ in range(300):
        drafter.update(0, 0)
    assert drafter.acceptance == pytest.approx(prior, abs=0.01)


@pytest.mark.parametrize(
    ("cost", "acceptance", "rows", "size"),
    [
        (0.0, 0.5, 1, 8),  # free positions: all that is allowed
        (0.7, 0.95, 1, 3),  # dear positions, reliable drafts: a few
        (0.7, 0.5, 1, 0),  # dear positions, coin-flip drafts: none
        (0.1, 0.6, 1, 3),
        (0.1, 0.6, 4, 2),  # more rows: a draft's share of the gain is smaller
    ],
)
def test_the_draft_size_maximises_expected_tokens_per_second(cost, acceptance, rows, size):
    assert Speculation(cost).draft_size(acceptance, rows, limit=8) == size


# -- greedy: the same output --------------------------------------------------------------------


@pytest.mark.parametrize("prompt", prompts(24))
def test_greedy_output_with_drafts_is_the_output_without(prompt):
    requests = [{"prompt": prompt, "max_tokens": 40}]
    off, off_tokens, _ = generate(False, requests)
    on, on_tokens, scheduler = generate(True, requests)
    assert on == off and on_tokens == off_tokens


def test_drafts_are_both_accepted_and_rejected_over_these_prompts():
    drafted = accepted = 0
    for prompt in prompts(24):
        _, _, scheduler = generate(True, [{"prompt": prompt, "max_tokens": 40}])
        d, a = scheduler.take_drafts()
        drafted, accepted = drafted + d, accepted + a
    assert 0 < accepted < drafted  # else the tests above prove little


@pytest.mark.parametrize("seed", range(6))
def test_greedy_output_with_drafts_is_the_output_without_in_a_batch(seed):
    requests = [{"prompt": p, "max_tokens": 30} for p in prompts(4, seed)]
    off, off_tokens, _ = generate(False, requests, n_slots=2)
    on, on_tokens, _ = generate(True, requests, n_slots=2)
    assert on == off and on_tokens == off_tokens


def test_usage_counts_what_was_emitted():
    (events,), (tokens,), _ = generate(True, [{"prompt": "abcabcabcabc", "max_tokens": 40}])
    assert [n for _, _, n, _ in events] == list(range(1, len(events) + 1))
    assert len(tokens) - len("abcabcabcabc") == len(events)


# -- sampling: the same draws -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_seeded_sampling_with_drafts_repeats_itself_and_draws_what_it_would_without(seed):
    sampling = SamplingParams(temperature=1.5, seed=seed)
    requests = [{"prompt": p, "max_tokens": 30, "sampling": sampling} for p in prompts(2, seed)]
    first = generate(True, requests, n_slots=2)[:2]
    assert generate(True, requests, n_slots=2)[:2] == first
    assert generate(False, requests, n_slots=2)[:2] == first


def test_penalties_apply_to_each_drafted_position_as_of_that_position():
    sampling = SamplingParams(temperature=0, frequency_penalty=1.5, presence_penalty=0.5)
    requests = [{"prompt": p, "max_tokens": 30, "sampling": sampling} for p in prompts(6)]
    assert generate(True, requests)[:2] == generate(False, requests)[:2]


# -- rules: nothing they refuse -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "pattern", "shape"),
    [
        # The model favours the next byte; the grammar only digits. "12" in the output finds
        # the prompt's "3456789x": 'x' is drafted, and must give way to what the grammar allows.
        ("abc123456789x", "[0-9]+", r"[0-9]+"),
        # What the grammar allows changes along the draft: "12" finds the prompt's "34abc",
        # whose digits come where the grammar now wants letters (a mask as of the draft's
        # first position would let them through).
        ("q1234abc5678", "[0-9]{4}[a-z]{3}[0-9]{4}", r"[0-9]{4}[a-z]{3}[0-9]{4}"),
    ],
)
def test_a_grammar_sequence_never_emits_a_drafted_token_the_grammar_refuses(prompt, pattern, shape):
    request = {"prompt": prompt, "max_tokens": 30, "grammar": Grammar(regex_grammar(pattern))}
    off, off_tokens, _ = generate(False, [request], rule=favoured)
    on, on_tokens, scheduler = generate(True, [request], rule=favoured)
    generated = on_tokens[0][len(prompt) :]
    assert re.fullmatch(shape, text_of([t for t in generated if t != EOS])), text_of(generated)
    assert (on, on_tokens) == (off, off_tokens)
    assert all(not error for _, _, _, error in on[0])
    drafted, accepted = scheduler.take_drafts()
    assert 0 < accepted < drafted


@pytest.mark.parametrize("stop", ["cd", "e.", "ba", "aaa", "dcb"])
def test_stop_strings_cut_where_they_cut_without_drafts(stop):
    requests = [{"prompt": p, "max_tokens": 40, "stop": (stop,)} for p in prompts(8)]
    off, off_tokens, _ = generate(False, requests)
    on, on_tokens, _ = generate(True, requests)
    assert on == off and on_tokens == off_tokens
    assert all(stop not in "".join(t for t, _, _, _ in events) for events in on)


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 5, 9])
def test_max_tokens_cuts_where_it_cuts_without_drafts(max_tokens):
    requests = [{"prompt": "abcabcabcabc", "max_tokens": max_tokens}]
    on, on_tokens, _ = generate(True, requests)
    assert (on, on_tokens) == generate(False, requests)[:2]
    assert len(on[0]) <= max_tokens and on[0][-1][2] == len(on[0])


# -- counted: the engine's observer and /metrics ------------------------------------------------


def test_the_engine_reports_each_steps_drafts_to_its_observer_and_metrics_count_them():
    from chatd.engine.engine import Engine
    from chatd.server.metrics import Metrics
    from tests.unit.test_engine import collect, request

    runner = FakeRunner(n_slots=1, n_ctx=160, max_batch_tokens=32, rule=context_rule)
    engine = Engine(runner, start=False, speculation=Speculation(0.0))
    metrics = Metrics(process=False)

    class Observer:
        def __getattr__(self, name):  # latencies and finishes: not what this test is about
            return lambda *args: None

        def drafts(self, drafted: int, accepted: int) -> None:
            metrics.add_drafts("m", drafted, accepted)

    engine.observer = Observer()

    async def main():
        generation = engine.submit(request(prompts(1)[0] * 2, max_tokens=40))
        while engine.scheduler.has_work():
            engine.step()
        return await collect(generation)

    events = asyncio.run(main())
    text = metrics.render()[0].decode()
    drafted = float(text.split('chatd_draft_tokens_total{model="m"} ')[1].split()[0])
    accepted = float(text.split('chatd_draft_accepted_tokens_total{model="m"} ')[1].split()[0])
    assert 0 < accepted < drafted
    assert events[-1].completion_tokens == len(events)
