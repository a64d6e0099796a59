"""Grammars as token masks over a byte vocabulary: compiled once per text, each sequence its
own state, errors reported as GrammarError, and the lazy grammar taking hold on its triggers."""

from __future__ import annotations

import numpy as np
import pytest

from chatd.engine import constraints
from chatd.engine.constraints import (
    GrammarError,
    Grammars,
    LazyConstraint,
    allowed_tokens,
    fill_masks,
    json_schema_grammar,
    lark_grammar,
    regex_grammar,
)
from chatd.engine.types import Grammar
from tests.unit.fake_runner import EOS, TOKENIZER

N_VOCAB = TOKENIZER.n_vocab
DIGITS = [*b"0123456789"]
LOWER = [*b"abcdefghijklmnopqrstuvwxyz"]


def allowed(*states) -> list[list[int]]:
    """The token ids each state allows next."""
    masks = fill_masks(list(states), N_VOCAB)
    return [np.flatnonzero(allowed_tokens(m, N_VOCAB)).tolist() for m in masks]


def feed(state, text: str) -> None:
    for token in TOKENIZER.encode(text):
        state.consume(token, TOKENIZER.token_text[token])


@pytest.fixture
def grammars() -> Grammars:
    return Grammars(TOKENIZER)


@pytest.fixture
def compiled(monkeypatch) -> list[str]:
    """The text of every grammar compiled from now on, in order."""
    texts: list[str] = []

    class Counting(constraints.Constraint):
        def __init__(self, tokenizer, grammar: str):
            texts.append(grammar)
            super().__init__(tokenizer, grammar)

    monkeypatch.setattr(constraints, "Constraint", Counting)
    return texts


def test_a_mask_allows_exactly_what_the_grammar_may_take_next(grammars):
    state = grammars.constraint(Grammar(regex_grammar("[0-9]{2}")))

    assert allowed(state) == [DIGITS]
    feed(state, "42")
    assert allowed(state) == [[EOS]]  # complete: only the end
    assert state.error is None


def test_the_same_grammar_text_is_compiled_once(grammars, compiled):
    digits, letters = regex_grammar("[0-9]+"), regex_grammar("[a-z]+")

    grammars.check(Grammar(digits))
    for _ in range(3):
        grammars.constraint(Grammar(digits))
    grammars.constraint(Grammar(letters))
    grammars.constraint(Grammar(digits, triggers=("{",)))

    assert compiled == [digits, letters]


def test_the_least_recently_used_grammar_is_compiled_again(compiled):
    grammars = Grammars(TOKENIZER, size=2)
    a, b, c = (regex_grammar(p) for p in ("a+", "b+", "c+"))

    for text in (a, b, a, c, a, b):  # c pushes out b, the least recently used
        grammars.check(Grammar(text))

    assert compiled == [a, b, c, b]


def test_each_sequence_gets_a_state_of_its_own(grammars):
    choice = Grammar(regex_grammar("ab|cd"))
    first, second = grammars.constraint(choice), grammars.constraint(choice)

    feed(first, "a")

    assert allowed(first, second) == [[ord("b")], [ord("a"), ord("c")]]
    assert allowed(grammars.constraint(choice)) == [[ord("a"), ord("c")]]


def test_a_token_the_grammar_refuses_puts_the_state_in_error(grammars):
    state = grammars.constraint(Grammar(regex_grammar("[0-9]+")))

    feed(state, "x")

    assert "doesn't satisfy the grammar" in state.error


@pytest.mark.parametrize(
    "text, message",
    [
        (regex_grammar("("), "unclosed group"),
        (lark_grammar("start: ("), "Expected token"),
        ("%%%", "lexer error"),
    ],
)
def test_a_grammar_that_does_not_compile_raises_grammar_error(grammars, text, message):
    with pytest.raises(GrammarError, match=message):
        grammars.check(Grammar(text))
    with pytest.raises(GrammarError, match=message):
        grammars.constraint(Grammar(text, triggers=("{",)))


def test_an_invalid_json_schema_raises_grammar_error(grammars):
    with pytest.raises(GrammarError, match="invalid JSON schema"):
        json_schema_grammar("{not json")
    with pytest.raises(GrammarError, match="no such type"):
        grammars.check(Grammar(json_schema_grammar({"type": "no such type"})))


CALL = lark_grammar('start: /[ ]*/ "{" /[a-z]+/ "}"')


def test_a_lazy_grammar_takes_hold_on_its_trigger(grammars):
    state = grammars.constraint(Grammar(CALL, triggers=("{",)))
    assert isinstance(state, LazyConstraint) and not state.active

    feed(state, "  ")
    assert not state.active  # only whitespace so far: undecided
    feed(state, "{")

    assert state.active
    assert allowed(state) == [LOWER]
    feed(state, "ab}")
    assert allowed(state) == [[EOS]] and state.error is None


def test_a_lazy_grammar_waits_through_a_partial_trigger_and_lets_plain_text_be(grammars):
    call = Grammar(CALL, triggers=("<tool_call>", "{"))
    partial, plain = grammars.constraint(call), grammars.constraint(call)

    feed(partial, "<tool")
    feed(plain, "Hello {")

    assert not partial.active and not plain.active
    feed(partial, "!")  # no longer a trigger: plain text from now on
    feed(partial, "{")
    assert not partial.active and partial.error is None and plain.error is None


def test_a_lazy_grammar_whose_output_cannot_be_a_call_gives_up(grammars):
    # "<tool_call>" triggers, but this grammar has no such start: the answer stays free.
    state = grammars.constraint(Grammar(CALL, triggers=("<tool_call>",)))

    feed(state, "<tool_call>")
    feed(state, "{")

    assert not state.active and state.error is None


def test_lazy_states_of_one_grammar_are_independent(grammars):
    call = Grammar(CALL, triggers=("{",))
    first, second = grammars.constraint(call), grammars.constraint(call)

    feed(first, "{a")

    assert first.active and not second.active
    feed(second, "{")
    assert allowed(first, second) == [[*LOWER, ord("}")], LOWER]


# -- grammars that compile but cannot be followed are refused at check -------------------------

SELF_REF = json_schema_grammar({"$ref": "#"})
MUTUAL_REF = json_schema_grammar(
    {"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"}
)
EXPLODING_REGEX = regex_grammar("(a{1000}){1000}")


@pytest.mark.parametrize(
    "text, reason",
    [
        (SELF_REF, "NoExtensionBias"),
        (MUTUAL_REF, "NoExtensionBias"),
        (EXPLODING_REGEX, "too many expressions"),
    ],
    ids=["self-ref", "mutual-ref", "exploding-regex"],
)
def test_a_grammar_that_fails_at_its_first_tokens_is_refused_by_check(grammars, text, reason):
    for _ in range(2):  # the verdict is remembered with the compiled grammar, and repeated
        with pytest.raises(GrammarError, match=reason) as info:
            grammars.check(Grammar(text))
        message = str(info.value)
        assert len(message) <= constraints.MAX_ERROR_CHARS
        assert "<state>" not in message and "<non-verbose" not in message and "\n" not in message


def test_check_leaves_the_compiled_grammar_fresh_for_the_sequences(grammars):
    grammar = Grammar(regex_grammar("ab|cd"))
    grammars.check(grammar)
    assert allowed(grammars.constraint(grammar)) == [[ord("a"), ord("c")]]


def test_a_recursive_schema_with_a_base_case_passes_check(grammars):
    tree = {
        "type": "object",
        "properties": {"children": {"type": "array", "items": {"$ref": "#"}}},
        "required": ["children"],
    }
    grammars.check(Grammar(json_schema_grammar(tree)))


def test_an_error_mid_sequence_is_short_and_has_no_state_dump(grammars):
    state = grammars.constraint(Grammar(EXPLODING_REGEX))  # unchecked: as if it got through
    assert allowed(state) == [[ord("a")]]
    feed(state, "a")
    allowed(state)
    assert "too many expressions" in state.error
    assert "<state>" not in state.error and "\n" not in state.error
