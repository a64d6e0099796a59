"""Constrained decoding with llguidance: JSON schema, regex and Lark grammars as token masks.

A Constraint follows one sequence. Before each sample the scheduler fills the masks of every
constrained sequence (llguidance works outside the GIL, 15-30 us a token here); the sampler
then keeps only the allowed tokens, and the sampled token advances the matcher. The tokens the
grammar then forces (JSON keys and punctuation, the rest of an enum value) are taken at once
(`forced`), and an answer near the end of its max_tokens is steered to a valid end
(engine/closing.py).

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

from chatd.engine.closing import OUTSIDE, BudgetGuard, Closer
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

# The longest closing walk tried from a grammar's start (its shortest answer, found once).
SHORTEST_LIMIT = 2048


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
        self.closer: Closer | None = None  # the tokenizer's closing walk (Grammars sets it)
        self.shortest: int | None = None  # tokens of the closing walk from the start
        self.guard: BudgetGuard | None = None  # a sequence's watch over its tokens left
        self.quoting = OUTSIDE  # where the output stands in JSON strings, for the guard

    def copy(self) -> Constraint:
        twin = object.__new__(Constraint)
        twin.matcher = self.matcher.deep_copy()
        twin.verdict, twin.closer, twin.shortest = self.verdict, self.closer, self.shortest
        twin.guard = BudgetGuard(self.closer, self.shortest or 0) if self.closer else None
        twin.quoting = self.quoting
        return twin

    def consume(self, token: int, text: str = "") -> None:
        self.consume_all([token])

    def consume_all(self, tokens: list[int]) -> None:
        self.matcher.consume_tokens(tokens)
        if self.closer:
            self.quoting = self.closer.after(self.quoting, tokens)
        if self.guard:
            self.guard.took(tokens)

    def forced(self, limit: int) -> list[int]:
        """The tokens the grammar forces next (at most limit), consumed: the sequence takes
        them without sampling. llguidance stops short of bytes whose tokenization could
        still depend on what follows."""
        tokens = self.matcher.compute_ff_tokens()[:limit]
        if tokens:
            self.consume_all(tokens)
        return tokens

    @property
    def finished(self) -> bool:
        """The grammar is complete and takes nothing more but an end token."""
        return self.matcher.is_stopped() and not self.matcher.is_error()

    def within_budget(self, allowed: np.ndarray, logits: np.ndarray, left: int, candidates: int):
        """allowed, narrowed near the end of the budget to tokens that still let a valid
        answer end within `left` tokens (engine/closing.py)."""
        if self.guard is None:
            return allowed
        return self.guard.narrow(self.matcher, self.quoting, allowed, logits, left, candidates)

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

    @property
    def finished(self) -> bool:
        return self._inner is not None and self._inner.finished

    def copy(self) -> LazyConstraint:
        return LazyConstraint(self._template, self._triggers)

    def forced(self, limit: int) -> list[int]:
        return self._inner.forced(limit) if self._inner else []

    def within_budget(self, allowed: np.ndarray, logits: np.ndarray, left: int, candidates: int):
        if self._inner is None:
            return allowed
        return self._inner.within_budget(allowed, logits, left, candidates)

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
            inner.consume_all(self._tokens)
            if not inner.error:
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
        self._closer: Closer | None = None

    def check(self, grammar: Grammar, max_tokens: int | None = None) -> None:
        """Raises GrammarError for a grammar that does not compile, that fails within its
        first tokens (checked once per compiled grammar, on a copy), or (not lazy) whose
        shortest answer chatd can find takes more than max_tokens."""
        template = self._template(grammar.text)
        if template.verdict is None:
            template.verdict = self._probe(template.copy())
        if template.verdict:
            raise GrammarError(f"no output can follow this grammar: {template.verdict}")
        if max_tokens is None or grammar.triggers:
            return
        if template.shortest is None:
            # 0 when the walk finds no end: the heuristic failed, which proves nothing.
            walk = template.closer.walk(template.matcher, SHORTEST_LIMIT, OUTSIDE)
            template.shortest = 0 if walk is None else len(walk)
        if template.shortest > max_tokens:
            raise GrammarError(
                f"no valid answer fits in max_tokens ({max_tokens}): the shortest answer "
                f"found takes {template.shortest} tokens"
            )

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
        compiled.closer = self._closing()
        with self._lock:
            self._compiled[text] = compiled
            while len(self._compiled) > self._size:
                self._compiled.popitem(last=False)
        return compiled

    def _closing(self) -> Closer:
        """The tokenizer's closing walk, scored on first use (a fraction of a second)."""
        if self._closer is None:
            t = self._tokenizer
            self._closer = Closer(t.token_bytes, t.hidden, t.eog)
        return self._closer


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
