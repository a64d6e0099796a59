"""Constrained decoding with llguidance: JSON schema, regex and Lark grammars as token masks.

A Constraint follows one sequence. Before each sample the scheduler fills the masks of every
constrained sequence (llguidance works outside the GIL, 15-30 us a token here); the sampler
then keeps only the allowed tokens, and the sampled token advances the matcher.

Some grammars compile yet cannot be followed: a schema that only refers to itself allows no
first token, and a regex like `(a{1000}){1000}` exhausts the lexer at the second. llguidance
reports these only once it computes a mask, so `Grammars.check` walks a fresh copy through its
first tokens before anything is queued. Errors come without llguidance's state dump
(`verbose_errors=False`), on one line and capped at `MAX_ERROR_CHARS`.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import llguidance
import llguidance.numpy
import numpy as np

from chatd.engine.runners.base import Tokenizer
from chatd.engine.types import Grammar

# Compact but readable JSON, and no runs of whitespace for a small model to get lost in.
JSON_OPTIONS: llguidance.JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


# Errors without the parser's state and the grammar (which may hold a client's whole schema).
_LIMITS = llguidance.LLParserLimits(verbose_errors=False)

MAX_ERROR_CHARS = 300

# Masks computed when checking a grammar: a schema with no base case fails at the first, a
# lexer that explodes at the second (after one token).
_PROBE_MASKS = 2


class GrammarError(ValueError):
    """The schema or pattern cannot be compiled; the message says what and where."""


def json_schema_grammar(schema: dict[str, Any] | str) -> str:
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except (ValueError, TypeError) as exc:
        raise GrammarError(f"invalid JSON schema: {exc}") from exc


def regex_grammar(pattern: str) -> str:
    return llguidance.LLMatcher.grammar_from_regex(pattern)


def lark_grammar(lark: str) -> str:
    return llguidance.LLMatcher.grammar_from_lark(lark)


class Constraint:
    """One sequence's grammar state, in force from the first token."""

    active = True

    def __init__(self, tokenizer: llguidance.LLTokenizer, grammar: str):
        self.matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0, limits=_LIMITS)
        if self.matcher.is_error():
            raise GrammarError(_clean(self.matcher.get_error()))
        self.verdict: str | None = None  # Grammars.check's finding: "" when it can be followed

    def copy(self) -> Constraint:
        twin = object.__new__(Constraint)
        twin.matcher = self.matcher.deep_copy()
        twin.verdict = self.verdict
        return twin

    def consume(self, token: int, text: str = "") -> None:
        self.matcher.consume_token(token)

    @property
    def error(self) -> str | None:
        return _clean(self.matcher.get_error()) if self.matcher.is_error() else None


class LazyConstraint:
    """A grammar that takes hold only once the output starts with a trigger (say `{` or
    `<tool_call>`): the model may answer freely, but a call, once begun, must be valid.

    The grammar describes the whole output; on the trigger it replays the tokens so far into
    a copy of `template`, compiled once (Grammars) and never advanced itself: copies for other
    choices and triggers cost no compilation.
    """

    def __init__(self, template: Constraint, triggers: tuple[str, ...]):
        self._template, self._triggers = template, triggers
        self._tokens: list[int] = []
        self._head = ""
        self._inner: Constraint | None = None
        self._given_up = False

    @property
    def active(self) -> bool:
        return self._inner is not None

    @property
    def matcher(self) -> llguidance.LLMatcher:
        return self._inner.matcher

    @property
    def error(self) -> str | None:
        return self._inner.error if self._inner else None

    def copy(self) -> LazyConstraint:
        return LazyConstraint(self._template, self._triggers)

    def consume(self, token: int, text: str = "") -> None:
        if self._inner:
            self._inner.consume(token)
            return
        if self._given_up:
            return
        self._tokens.append(token)
        self._head += text
        head = self._head.lstrip()
        if not head:
            return
        if any(head.startswith(t) for t in self._triggers):
            inner = self._template.copy()
            if inner.matcher.consume_tokens(self._tokens) and not inner.error:
                self._inner = inner
            else:
                self._given_up = True
        elif not any(t.startswith(head) for t in self._triggers):
            self._given_up = True  # plain text: the grammar never applies


class Grammars:
    """One tokenizer's compiled grammars, the most recently used kept: the choices of a request
    share one compilation, and a schema or tool list that comes again is not compiled again
    (2-7 ms a schema here; a tool list's lazy grammar more)."""

    def __init__(self, tokenizer: Tokenizer, size: int = 64):
        self._tokenizer, self._size = tokenizer, size
        self._compiled: OrderedDict[str, Constraint] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, grammar: Grammar) -> None:
        """Raises GrammarError for a grammar that does not compile, or that fails within its
        first tokens (checked once per compiled grammar, on a copy)."""
        template = self._template(grammar.text)
        if template.verdict is None:
            template.verdict = self._probe(template.copy())
        if template.verdict:
            raise GrammarError(f"no output can follow this grammar: {template.verdict}")

    def constraint(self, grammar: Grammar) -> Constraint | LazyConstraint:
        """A fresh state for one sequence."""
        template = self._template(grammar.text)
        return LazyConstraint(template, grammar.triggers) if grammar.triggers else template.copy()

    def _probe(self, probe: Constraint) -> str:
        """Walks a fresh state through its first masks, taking the lowest allowed token that
        does not end the output: the error llguidance reports on the way, or ""."""
        n_vocab, ends = self._tokenizer.n_vocab, self._tokenizer.eog
        for _ in range(_PROBE_MASKS):
            mask = fill_masks([probe], n_vocab)[0]
            if probe.error:
                return probe.error
            token = next(
                (t for t in np.flatnonzero(allowed_tokens(mask, n_vocab)) if t not in ends), None
            )
            if token is None:  # only the end is allowed: nothing further to try
                return ""
            probe.consume(int(token))
            if probe.error:
                return probe.error
        return ""

    def _template(self, text: str) -> Constraint:
        """Compiled once, never advanced itself: sequences get copies."""
        with self._lock:
            if (found := self._compiled.get(text)) is not None:
                self._compiled.move_to_end(text)
                return found
        compiled = Constraint(self._tokenizer.grammar_tokenizer, text)
        with self._lock:
            self._compiled[text] = compiled
            while len(self._compiled) > self._size:
                self._compiled.popitem(last=False)
        return compiled


def fill_masks(constraints: list[Constraint], n_vocab: int) -> np.ndarray:
    """One bitmask row per constraint, on this thread: llguidance's parallel executor was
    measured slower here, its worker threads fighting llama.cpp's for the same cores."""
    masks = llguidance.numpy.allocate_token_bitmask(len(constraints), n_vocab)
    for i, c in enumerate(constraints):
        llguidance.numpy.fill_next_token_bitmask(c.matcher, masks, i)
    return masks


def allowed_tokens(mask: np.ndarray, n_vocab: int) -> np.ndarray:
    """A bitmask row as one bool per token id."""
    return np.unpackbits(mask.view(np.uint8), bitorder="little")[:n_vocab].astype(bool)


def _clean(message: str) -> str:
    """The sentence of an llguidance error: without the JSON blob of context some errors come
    in, nor the `<state>` (or `<non-verbose/>`) part that follows, on one line, capped."""
    try:
        message = json.loads(message).get("message", message)
    except (ValueError, AttributeError):
        pass
    message = str(message).split("\n<", 1)[0]
    message = " ".join(message.split())
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    return message
