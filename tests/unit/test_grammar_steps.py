"""Grammars that speed answers up and make them finish, stepped by hand through the fake
runner: tokens the grammar forces join the sampled one's event (counted, within max_tokens,
cut by a stop string), and a constrained answer near max_tokens is steered to a valid end."""

from __future__ import annotations

import json

import pytest

from chatd.engine.constraints import GrammarError, Grammars, json_schema_grammar, lark_grammar
from chatd.engine.constraints import regex_grammar as regex
from chatd.engine.scheduler import Scheduler
from chatd.engine.types import Grammar, SamplingParams
from tests.unit.fake_runner import FakeRunner
from tests.unit.test_scheduler import of, run_until_idle, submit, texts

# "abc" makes the fake model want "d": it takes "dog", and the grammar forces the rest.
PET = Grammar(regex("(cat|dog)-[0-9]{2}-end"))


def test_forced_tokens_join_the_sampled_token_and_feed_as_one_chunk():
    runner = FakeRunner(n_slots=1)
    scheduler = Scheduler(runner)
    seq = submit(scheduler, "abc", max_tokens=20, grammar=PET)

    events = of(run_until_idle(scheduler), seq)

    # "d" sampled, "og-" forced; "0" and "1" sampled (the model wants neither), "-end"
    # forced, and the grammar is complete: the answer ends without a step for the end token.
    assert texts(events) == ["dog-", "0", "1-end"]
    assert [e.finish_reason for e in events] == [None, None, "stop"]
    assert seq.tokens[seq.n_prompt :] == [*b"dog-01-end"]
    assert events[-1].completion_tokens == 10
    # The sampled and forced tokens go into the next forward together, logits at the last.
    assert runner.calls[1] == [(0, 3, "dog-", True)]
    assert len(runner.calls) == 3


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 4, 5])
def test_forced_tokens_never_pass_max_tokens(max_tokens):
    scheduler = Scheduler(FakeRunner(n_slots=1))
    seq = submit(scheduler, "abc", max_tokens=max_tokens, grammar=PET)

    events = of(run_until_idle(scheduler), seq)

    assert "".join(texts(events)) == "dog-0"[:max_tokens]
    assert events[-1].finish_reason == "length"
    assert events[-1].completion_tokens == seq.n_generated == max_tokens


def test_a_stop_string_inside_forced_text_cuts_there():
    scheduler = Scheduler(FakeRunner(n_slots=1))
    seq = submit(scheduler, "abc", max_tokens=20, grammar=PET, stop=("g-",))

    events = of(run_until_idle(scheduler), seq)

    assert texts(events) == ["do"]
    assert events[0].finish_reason == "stop"
    # The tokens up to the one that completed the stop string, none after it.
    assert seq.tokens[seq.n_prompt :] == [*b"dog-"]
    assert events[0].completion_tokens == 4


def test_forced_tokens_have_one_logprobs_entry_each_with_logprob_zero():
    scheduler = Scheduler(FakeRunner(n_slots=1))
    sampling = SamplingParams(temperature=0, logprobs=True, top_logprobs=3)
    seq = submit(scheduler, "abc", max_tokens=20, grammar=PET, sampling=sampling)

    first = of(run_until_idle(scheduler), seq)[0]

    assert [lp.token for lp in first.logprobs] == ["d", "o", "g", "-"]
    forced = first.logprobs[1:]
    assert all(lp.logprob == 0.0 for lp in forced)
    assert [[t.token for t in lp.top] for lp in forced] == [["o"], ["g"], ["-"]]


CALL = Grammar(lark_grammar('start: /[ ]*/ "{\\"name\\": \\"" /[a-z]+/ "\\"}"'), triggers=("{",))


def test_a_lazy_grammar_forces_nothing_until_it_takes_hold():
    scheduler = Scheduler(FakeRunner(n_slots=2))
    # After "xyz" the model wants "{": the call begins and its key is forced at once.
    call = submit(scheduler, "xyz", max_tokens=12, grammar=CALL)
    # After "abc" it writes plain text: the grammar never applies, nothing is forced.
    plain = submit(scheduler, "abc", max_tokens=4, grammar=CALL)

    events = run_until_idle(scheduler)

    assert of(events, call)[0].text == '{"name": "'
    assert texts(of(events, plain)) == ["d", "e", "f", "g"]


# -- answers that finish within max_tokens ------------------------------------------------------

FREE_STRING = {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}
LIST = {
    "type": "object",
    "properties": {"xs": {"type": "array", "items": {"type": "string"}}},
    "required": ["xs"],
}


# Each with its shortest answer's length in tokens (a byte each): '{"s": ""}', '{"xs": []}'.
SHORTEST = {"free-string": (FREE_STRING, 9), "array": (LIST, 10)}


@pytest.mark.parametrize("name", SHORTEST)
@pytest.mark.parametrize("spare", [0, 1, 3, 7, 15])
@pytest.mark.parametrize("seed", [None, 1, 2])
def test_a_constrained_answer_that_would_run_on_is_closed_within_max_tokens(name, spare, seed):
    # The fake model never writes a quote by itself: unguarded, the string runs to the limit.
    schema, shortest = SHORTEST[name]
    max_tokens = shortest + spare
    scheduler = Scheduler(FakeRunner(n_slots=1))
    sampling = SamplingParams(temperature=0) if seed is None else SamplingParams(seed=seed)
    grammar = Grammar(json_schema_grammar(schema))
    seq = submit(scheduler, "abc", max_tokens=max_tokens, grammar=grammar, sampling=sampling)

    events = of(run_until_idle(scheduler), seq)

    text = "".join(texts(events))
    assert events[-1].finish_reason == "stop", text
    assert isinstance(json.loads(text), dict)
    assert events[-1].completion_tokens == seq.n_generated <= max_tokens


def test_check_refuses_a_grammar_whose_shortest_answer_does_not_fit():
    grammars = Grammars(FakeRunner().tokenizer)
    grammar = Grammar(json_schema_grammar(FREE_STRING))  # '{"s": ""}': 9 bytes, 9 tokens

    grammars.check(grammar, max_tokens=9)
    with pytest.raises(GrammarError, match=r"no valid answer fits in max_tokens \(8\)"):
        grammars.check(grammar, max_tokens=8)
    # A lazy grammar may not apply at all: any budget will do.
    grammars.check(Grammar(grammar.text, triggers=("{",)), max_tokens=1)
