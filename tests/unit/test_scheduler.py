"""The scheduler stepped by hand through a fake runner: admission, chunked prefill, prefix
reuse, aborts, a failing forward, grammar masks and the stop rules, to the exact token."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from chatd.engine.constraints import Grammars, regex_grammar
from chatd.engine.scheduler import Events, Scheduler
from chatd.engine.sequence import Sequence, Status
from chatd.engine.types import (
    GenerationRequest,
    Grammar,
    Load,
    PromptImages,
    SamplingParams,
    TokenEvent,
)
from tests.unit.fake_runner import EOS, TOKENIZER, FakeRunner, text_of

GREEDY = SamplingParams(temperature=0)
_ids = itertools.count()


def sequence(prompt: str, max_tokens: int = 8, grammar: Grammar | None = None, **kw) -> Sequence:
    sampling = kw.pop("sampling", GREEDY)
    request = GenerationRequest(
        f"req-{next(_ids)}", TOKENIZER.encode(prompt), sampling, max_tokens, grammar=grammar, **kw
    )
    constraint = grammar and Grammars(TOKENIZER).constraint(grammar)
    return Sequence(request, TOKENIZER, constraint)


def submit(scheduler: Scheduler, prompt: str, **kw) -> Sequence:
    seq = sequence(prompt, **kw)
    scheduler.submit(seq)
    return seq


def of(events: Events, seq: Sequence) -> list[TokenEvent]:
    return [event for s, event in events if s is seq]


def run_until_idle(scheduler: Scheduler, max_steps: int = 200) -> Events:
    events: Events = []
    for _ in range(max_steps):
        if not scheduler.has_work():
            return events
        events += scheduler.step()
    raise AssertionError(f"still busy after {max_steps} steps")


def texts(events: list[TokenEvent]) -> list[str]:
    return [e.text for e in events]


# -- admission, prefill and decoding ----------------------------------------------------------


def test_a_prompt_is_prefilled_in_one_forward_then_decoded_a_token_a_step():
    runner = FakeRunner(n_slots=1)
    scheduler = Scheduler(runner)
    seq = submit(scheduler, "abc", max_tokens=3)
    assert seq.status is Status.WAITING

    events = [of(scheduler.step(), seq) for _ in range(3)]

    assert [texts(e) for e in events] == [["d"], ["e"], ["f"]]
    assert runner.calls == [[(0, 0, "abc", True)], [(0, 3, "d", True)], [(0, 4, "e", True)]]
    last = events[-1][0]
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("length", 3, 3)
    assert [e[0].finish_reason for e in events[:-1]] == [None, None]
    assert seq.status is Status.FINISHED
    assert not scheduler.has_work()


def test_admission_fills_the_free_slots_and_the_rest_wait_their_turn():
    runner = FakeRunner(n_slots=2)
    scheduler = Scheduler(runner)
    first, second, third = (submit(scheduler, p, max_tokens=2) for p in ("a", "k", "u"))
    assert scheduler.load() == Load(running=0, waiting=1)

    scheduler.step()

    assert [s.status for s in (first, second, third)] == [Status.RUNNING] * 2 + [Status.WAITING]
    assert (first.slot, second.slot) == (0, 1)
    assert scheduler.load() == Load(running=2, waiting=1)
    scheduler.step()  # both finish: the third takes a slot at the next step
    assert third.status is Status.WAITING
    events = scheduler.step()
    assert third.status is Status.RUNNING and texts(of(events, third)) == ["v"]
    assert runner.calls[-1] == [(0, 0, "u", True)]


def test_a_long_prompt_is_prefilled_in_chunks_while_decoding_goes_on():
    runner = FakeRunner(n_slots=2, max_batch_tokens=4)
    scheduler = Scheduler(runner)
    long = submit(scheduler, "klmnopqrst", max_tokens=2)  # admitted first, served second
    decoding = submit(scheduler, "a", max_tokens=20)

    steps = [scheduler.step() for _ in range(4)]

    # Every step: the decoding sequence's token first, then what the budget leaves of the prompt.
    assert runner.calls == [
        [(1, 0, "a", True), (0, 0, "klm", False)],
        [(1, 1, "b", True), (0, 3, "nop", False)],
        [(1, 2, "c", True), (0, 6, "qrs", False)],
        [(0, 9, "t", True), (1, 3, "d", True)],  # one token each: in admission order
    ]
    assert [texts(of(step, decoding)) for step in steps] == [["b"], ["c"], ["d"], ["e"]]
    assert [texts(of(step, long)) for step in steps] == [[], [], [], ["u"]]


def test_a_prompt_longer_than_the_budget_alone_takes_several_steps():
    runner = FakeRunner(n_slots=1, max_batch_tokens=4)
    scheduler = Scheduler(runner)
    seq = submit(scheduler, "abcdefghij", max_tokens=1)

    events = run_until_idle(scheduler)

    assert runner.calls == [
        [(0, 0, "abcd", False)],
        [(0, 4, "efgh", False)],
        [(0, 8, "ij", True)],
    ]
    assert texts(of(events, seq)) == ["k"]


# -- slots and prefix reuse ---------------------------------------------------------------------


def test_a_finished_sequence_leaves_its_tokens_for_the_next_prompt_to_reuse():
    runner = FakeRunner(n_slots=1)
    scheduler = Scheduler(runner)
    submit(scheduler, "abcdef", max_tokens=2)  # "gh": the cache holds "abcdefg"
    run_until_idle(scheduler)

    seq = submit(scheduler, "abcdefgXY", max_tokens=1)
    events = of(run_until_idle(scheduler), seq)

    assert runner.truncations[-1] == (0, 7)
    assert runner.calls[-1] == [(0, 7, "XY", True)]
    assert (seq.n_reused, events[-1].cached_tokens, events[-1].prompt_tokens) == (7, 7, 9)
    assert texts(events) == ["Z"]


def test_a_prompt_the_slot_holds_whole_runs_its_last_token_again():
    runner = FakeRunner(n_slots=1)
    scheduler = Scheduler(runner)
    submit(scheduler, "abcd", max_tokens=1)
    run_until_idle(scheduler)

    seq = submit(scheduler, "abcd", max_tokens=1)
    events = of(run_until_idle(scheduler), seq)

    assert runner.calls[-1] == [(0, 3, "d", True)]  # its logits give the first sample
    assert seq.n_reused == 3 and texts(events) == ["e"]


def test_a_prompt_goes_to_the_free_slot_with_the_longest_common_prefix():
    runner = FakeRunner(n_slots=2)
    scheduler = Scheduler(runner)
    submit(scheduler, "aaaa", max_tokens=1)
    submit(scheduler, "xxxx", max_tokens=1)
    run_until_idle(scheduler)

    seq = submit(scheduler, "xxxxz", max_tokens=1)
    run_until_idle(scheduler)

    assert (seq.slot, seq.n_reused) == (1, 4)
    assert runner.calls[-1] == [(1, 4, "z", True)]


def test_no_slot_reuses_what_follows_an_image():
    runner = FakeRunner(n_slots=1)
    scheduler = Scheduler(runner)
    submit(scheduler, "abcdef", max_tokens=1, images=PromptImages(reusable=2))
    run_until_idle(scheduler)

    text_only = submit(scheduler, "abcdef", max_tokens=1)
    run_until_idle(scheduler)
    with_image = submit(scheduler, "abcdef", max_tokens=1, images=PromptImages(reusable=1))
    run_until_idle(scheduler)

    assert text_only.n_reused == 2  # the slot kept only what preceded the first image
    assert with_image.n_reused == 1  # its own first image comes after one token
    assert runner.calls[-2:] == [[(0, 2, "cdef", True)], [(0, 1, "bcdef", True)]]


# -- aborts ---------------------------------------------------------------------------------


def test_aborting_a_waiting_sequence_drops_it_before_it_gets_a_slot():
    runner = FakeRunner(n_slots=1)
    scheduler = Scheduler(runner)
    running = submit(scheduler, "a", max_tokens=3)
    waiting = submit(scheduler, "k", max_tokens=3)
    scheduler.step()
    assert scheduler.load() == Load(running=1, waiting=1)

    scheduler.abort(waiting.id)
    events = run_until_idle(scheduler)

    assert waiting.status is Status.ABORTED and waiting.slot is None
    assert of(events, waiting) == []
    assert texts(of(events, running)) == ["c", "d"]
    assert all(slot == 0 and text != "k" for call in runner.calls for slot, _, text, _ in call)


def test_aborting_a_running_sequence_frees_its_slot_with_its_prefix():
    runner = FakeRunner(n_slots=1)
    scheduler = Scheduler(runner)
    aborted = submit(scheduler, "abc", max_tokens=50)
    scheduler.step()
    scheduler.step()  # the cache holds "abcd"
    after = submit(scheduler, "abcdQ", max_tokens=1)

    scheduler.abort(aborted.id)
    events = scheduler.step()

    assert aborted.status is Status.ABORTED
    assert of(events, aborted) == []
    assert (after.slot, after.n_reused) == (0, 4)
    assert runner.calls[-1] == [(0, 4, "Q", True)]
    assert texts(of(events, after)) == ["R"]
    scheduler.abort(aborted.id)  # again, and for a finished one: nothing happens
    scheduler.abort(after.id)
    assert scheduler.step() == [] and not scheduler.has_work()


# -- a failing forward ------------------------------------------------------------------------


def test_a_failing_forward_ends_every_running_sequence_and_the_scheduler_goes_on():
    runner = FakeRunner(n_slots=2)
    runner.fail_on = {2}
    scheduler = Scheduler(runner)
    first = submit(scheduler, "abc", max_tokens=5)
    scheduler.step()
    second = submit(scheduler, "klm", max_tokens=5)

    events = scheduler.step()

    assert [(s, e.error) for s, e in events] == [
        (first, "generation failed: the device fell over"),
        (second, "generation failed: the device fell over"),
    ]
    assert [(e.prompt_tokens, e.completion_tokens) for _, e in events] == [(3, 1), (3, 0)]
    assert first.status is second.status is Status.FINISHED
    # What the cache holds after a failed forward is unknown: nothing of it is reused.
    again = submit(scheduler, "abcd", max_tokens=1)
    assert texts(of(run_until_idle(scheduler), again)) == ["e"]
    assert again.n_reused == 0
    assert runner.calls[-1] == [(0, 0, "abcd", True)]


# -- grammars -------------------------------------------------------------------------------


def test_a_grammar_masks_the_tokens_it_does_not_allow():
    scheduler = Scheduler(FakeRunner(n_slots=1))
    seq = submit(scheduler, "abc", max_tokens=10, grammar=Grammar(regex_grammar("[0-9]{3}")))

    events = of(run_until_idle(scheduler), seq)

    # The model wants "d"; the grammar allows digits, then only the end: no step is spent
    # on the end token, the answer ends with its third digit.
    assert texts(events) == ["0", "1", "2"]
    assert seq.tokens[seq.n_prompt :] == [*b"012"]
    assert (events[-1].finish_reason, events[-1].completion_tokens) == ("stop", 3)


@pytest.mark.parametrize("seed", range(5))
def test_a_sampled_constrained_sequence_never_draws_a_token_the_grammar_refuses(seed):
    scheduler = Scheduler(FakeRunner(n_slots=1))
    sampling = SamplingParams(temperature=1.0, seed=seed)
    seq = submit(
        scheduler, "abc", max_tokens=6, grammar=Grammar(regex_grammar("[0-9]+")), sampling=sampling
    )

    run_until_idle(scheduler)

    generated = seq.tokens[seq.n_prompt :]
    body = generated[:-1] if generated[-1] == EOS else generated
    assert body and all(chr(t).isdigit() for t in body), text_of(generated)


def test_a_token_the_grammar_cannot_take_ends_the_sequence_with_an_error():
    runner = FakeRunner(n_slots=1)
    scheduler = Scheduler(runner)
    # Every token the grammar allows banned: the sampler can only pick one it refuses.
    banned = {t: -np.inf for t in b"0123456789"}
    sampling = SamplingParams(temperature=0, logit_bias=banned)
    seq = submit(
        scheduler, "abc", max_tokens=5, grammar=Grammar(regex_grammar("[0-9]+")), sampling=sampling
    )

    events = of(run_until_idle(scheduler), seq)

    assert len(events) == 1
    assert events[0].error.startswith("grammar: ") and events[0].finish_reason is None
    assert (events[0].text, events[0].completion_tokens) == ("", 1)
    assert seq.status is Status.FINISHED and scheduler.slots.n_free == 1


# -- stop rules -----------------------------------------------------------------------------


def test_a_stop_string_is_held_back_across_tokens_and_never_shown():
    scheduler = Scheduler(FakeRunner(n_slots=1))
    seq = submit(scheduler, "abc", max_tokens=10, stop=("fg",))

    events = of(run_until_idle(scheduler), seq)

    assert texts(events) == ["d", "e", "", ""]
    assert [e.finish_reason for e in events] == [None, None, None, "stop"]
    assert events[-1].completion_tokens == 4


def test_text_held_for_a_stop_string_comes_out_at_the_end_of_turn():
    scheduler = Scheduler(FakeRunner(n_slots=1))
    seq = submit(scheduler, ",", max_tokens=10, stop=(".x",))

    events = of(run_until_idle(scheduler), seq)

    assert texts(events) == ["-", "", "."]
    assert events[-1].finish_reason == "stop"


def test_the_end_of_turn_token_ends_the_sequence_without_text():
    scheduler = Scheduler(FakeRunner(n_slots=1))
    seq = submit(scheduler, ",", max_tokens=10)

    events = of(run_until_idle(scheduler), seq)

    assert texts(events) == ["-", ".", ""]
    assert [e.finish_reason for e in events] == [None, None, "stop"]
    assert events[-1].completion_tokens == 3 and seq.tokens[-1] == EOS


def test_max_tokens_ends_with_length_and_flushes_held_text():
    scheduler = Scheduler(FakeRunner(n_slots=1))
    seq = submit(scheduler, "abc", max_tokens=2, stop=("ex",))

    events = of(run_until_idle(scheduler), seq)

    assert texts(events) == ["d", "e"]  # "e" was held for "ex", then let out at the end
    assert [e.finish_reason for e in events] == [None, "length"]


def test_a_full_context_ends_with_length():
    scheduler = Scheduler(FakeRunner(n_slots=1, n_ctx=6))
    seq = submit(scheduler, "abcd", max_tokens=50)

    events = of(run_until_idle(scheduler), seq)

    assert texts(events) == ["e", "f"]
    assert (events[-1].finish_reason, events[-1].completion_tokens) == ("length", 2)


def test_logprobs_report_the_sampled_token_and_the_best_ones():
    scheduler = Scheduler(FakeRunner(n_slots=1))
    sampling = SamplingParams(temperature=0, logprobs=True, top_logprobs=2)
    seq = submit(scheduler, "abc", max_tokens=1, sampling=sampling)

    (event,) = of(run_until_idle(scheduler), seq)

    (lp,) = event.logprobs
    assert (lp.token, lp.bytes) == ("d", [ord("d")])
    expected = 10.0 - np.log(np.exp(10.0) + 256)
    assert lp.logprob == pytest.approx(expected)
    assert [t.token for t in lp.top][0] == "d" and len(lp.top) == 2
