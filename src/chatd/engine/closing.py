"""Constrained answers that finish within max_tokens, instead of being cut into invalid JSON.

A closing walk goes from a grammar state (on a copy) to an accepted end, one token at a time,
taking the allowed token that closes structures fastest: tokens that close strings, arrays and
objects first, then bare separators, long plain tokens (a string with a minimum length fills
sooner), and last escapes, openings of new structures and non-ASCII bytes. The tokens the
grammar then forces are part of the walk, and so is the end token when the grammar could still
go on. Its length is an upper bound on the shortest valid completion; it is a heuristic (the
true shortest may be shorter), and a grammar that it cannot close within a limit gets none.

`BudgetGuard` keeps a sequence within its tokens: near the end of its budget (within twice its
last estimate, plus `ZONE`) it walks at each step, and once the tokens left are within the
walk's length plus `ZONE`, the mask is narrowed to the walk's next token and those of the
model's best candidates after which a walk still fits. The walk's own next token always fits,
so once inside the zone an answer that fitted stays fitting; outside it, what is open (arrays,
objects, a string) counts too, so that an answer nesting deeper enters the zone in time. Walks
cost one mask each step (~30 us here for 49k tokens) and are computed only inside that zone.
"""

from __future__ import annotations

import llguidance
import llguidance.numpy
import numpy as np

# How many of the model's best allowed tokens a guarded step checks (besides the walk's next).
CANDIDATES = 2
# Steps are guarded when the tokens left are at most twice the last walk plus this many.
ZONE = 16
# Tokens inside one string after which a walk takes separators rather than long text.
_STUCK = 4
# The best-scored tokens a walk looks at before it scans the whole vocabulary.
_PROBE = 1024


# Where output stands in JSON text, as one int: the open arrays and objects (`state >> 2`),
# and outside strings, inside one, or just after a backslash in one (`state & 3`). Tracked
# from the bytes taken, for any grammar (in plain text it only orders tokens).
OUTSIDE, IN_STRING, ESCAPED = 0, 1, 2


def after(state: int, data: bytes) -> int:
    """The state after data."""
    depth, quoting = state >> 2, state & 3
    for byte in data:
        if quoting == ESCAPED:
            quoting = IN_STRING
        elif quoting == IN_STRING:
            quoting = ESCAPED if byte == 0x5C else OUTSIDE if byte == 0x22 else IN_STRING
        elif byte == 0x22:
            quoting = IN_STRING
        elif byte in b"[{":
            depth += 1
        elif byte in b"]}":
            depth = max(depth - 1, 0)
    return depth << 2 | quoting


def depth(state: int) -> int:
    """Arrays and objects open: each takes a token to close, and strings one more."""
    return (state >> 2) + (state & 3 != OUTSIDE)


def _score(data: bytes) -> float:
    """How well a token closes what is open, outside strings: the tiers are weights apart."""
    if not data:
        return -np.inf
    closers = data.count(b"]") + data.count(b"}")
    score = 1000.0 * closers - 500.0 * (data.count(b"[") + data.count(b"{"))
    if data.count(b'"') % 2:
        score -= 200.0  # opens a string, which takes another token to close
    if closers and b"," in data:
        score -= 300.0  # `},` goes on to another item where `}` ends the list
    if data.strip() == b",":
        score += 5.0  # ends a number when the object still needs keys
    return score + _plain(data)


def _score_zero_first(data: bytes) -> float:
    return _score(data) + (data[:1] == b"0")


def _score_in_string(data: bytes) -> float:
    """Inside a string: a quote closes it (and what follows it is scored as above), else the
    longest text fills a minimum length soonest."""
    if not data:
        return -np.inf
    if data[:1] == b'"':
        return 10000.0 + (_score(data[1:]) if len(data) > 1 else 1.0)
    return _plain(data)


def _score_stuck(data: bytes) -> float:
    """Inside a string that long text did not close (an email, a URI, a date): a quote if
    allowed, else a separator formats are made of."""
    if data[:1] == b'"':
        return _score_in_string(data)
    if len(data) == 1 and data in _SEPARATORS:
        return 100.0 - _SEPARATORS.index(data)
    return _plain(data)


_SEPARATORS = b"@:./-T"


def _plain(data: bytes) -> float:
    """Long tokens first; escapes and parts of characters last (both lengthen a string).
    Among digits 1 to 9 first: a 0 may have to be followed (`-0.`, `0.0`, the year 0000)."""
    score = float(min(len(data), 16))
    if data[:1] in (b"0", b"-"):
        score -= 0.5
    if b"\\" in data:
        score -= 10000.0
    if any(b >= 0x80 for b in data):
        score -= 100.0
    return score


class Closer:
    """One tokenizer's closing walk: the token scores are computed once, for outside and
    inside strings."""

    def __init__(self, token_bytes: list[bytes], hidden: set[int], eog: set[int]):
        scores = (_score, _score_in_string, _score_stuck, _score_zero_first)
        self._rankings = [_Ranking(token_bytes, hidden, f) for f in scores]
        self._token_bytes = token_bytes
        self.eog = np.array(sorted(eog), dtype=np.int64)
        self._n_vocab = len(token_bytes)

    def after(self, state: int, tokens: list[int]) -> int:
        for token in tokens:
            state = after(state, self._token_bytes[token])
        return state

    def walk(
        self, matcher: llguidance.LLMatcher, limit: int, state: int, first: int | None = None
    ) -> list[int] | None:
        """The tokens from matcher's state (string `state`; after `first`, which they include)
        to an accepted end, or None when there are more than `limit` or the walk fails. A walk
        that fails is tried again with separators in strings from the start (a walk from
        inside an email address has few tokens left to find its `@`) and 0 first among digits
        (an even number)."""
        for stuck_after in (_STUCK, 0):
            if (tokens := self._walk(matcher, limit, state, first, stuck_after)) is not None:
                return tokens
        return None

    def _walk(self, matcher, limit: int, state: int, first: int | None, stuck_after: int):
        m = matcher.deep_copy()
        tokens: list[int] = []
        mask = llguidance.numpy.allocate_token_bitmask(1, self._n_vocab)
        token = first
        in_string = 0  # tokens taken inside the current string
        while len(tokens) < limit:
            if token is None:
                if m.is_stopped():
                    return tokens
                llguidance.numpy.fill_next_token_bitmask(m, mask, 0)
                # In a long string, separators every other token: long text fills a minimum
                # length, separators make a format (email, URI) whole.
                stuck = in_string >= stuck_after and in_string % 2 == stuck_after % 2
                outside = 0 if stuck_after else 3
                ranking = outside if state & 3 == OUTSIDE else 2 if stuck else 1
                token = self._end(mask[0]) if m.is_accepting() else self._best(mask[0], ranking)
                if token is None or token in self.eog:
                    return None if token is None else [*tokens, token]
            if not m.consume_token(token):
                return None
            forced = m.compute_ff_tokens()
            if forced and not m.consume_tokens(forced):
                return None
            tokens += [token, *forced]
            state = self.after(state, [token, *forced])
            in_string = in_string + 1 if state & 3 != OUTSIDE else 0
            token = None
        return tokens if m.is_stopped() and len(tokens) <= limit else None

    def _best(self, mask: np.ndarray, ranking: int) -> int | None:
        allowed = np.unpackbits(mask.view(np.uint8), bitorder="little")[: self._n_vocab]
        return self._rankings[ranking].best(allowed.view(bool))

    def _end(self, mask: np.ndarray) -> int | None:
        ends = self.eog[_bits(mask, self.eog)]
        return int(ends[0]) if len(ends) else None


class _Ranking:
    """Token scores and the best-scored tokens in order, looked at before the whole vocabulary."""

    def __init__(self, token_bytes: list[bytes], hidden: set[int], score):
        self.scores = np.array([score(b) for b in token_bytes], dtype=np.float32)
        self.scores[sorted(hidden)] = -np.inf
        order = np.argsort(-self.scores, kind="stable")[:_PROBE]
        self.order = order[np.isfinite(self.scores[order])]

    def best(self, allowed: np.ndarray) -> int | None:
        probe = self.order[allowed[self.order]]
        if len(probe):
            return int(probe[0])
        scores = np.where(allowed, self.scores, -np.inf)
        best = int(np.argmax(scores))
        return best if np.isfinite(scores[best]) else None


class BudgetGuard:
    """One sequence's watch over its remaining tokens (see the module's docstring). The walks
    of a guarded step are kept: the sequence takes one of their first tokens, and the rest of
    that walk is the walk from where it then stands, found again for free."""

    def __init__(self, closer: Closer, estimate: int):
        self._closer, self._estimate = closer, estimate
        self._walks: dict[int, list[int]] = {}  # the last step's walks, by first token

    def took(self, tokens: list[int]) -> None:
        """The sequence took these tokens (a sampled one and those it forced)."""
        walk = self._walks.get(tokens[0]) if tokens else None
        self._walks = {}
        if walk is not None and walk[: len(tokens)] == tokens and len(walk) > len(tokens):
            self._walks[walk[len(tokens)]] = walk[len(tokens) :]

    def narrow(
        self,
        matcher: llguidance.LLMatcher,
        state: int,
        allowed: np.ndarray,
        logits: np.ndarray,
        left: int,
        candidates: int = CANDIDATES,
    ) -> np.ndarray:
        """`allowed` as it is far from the end; near it, only the tokens after which a valid
        end still fits in `left` tokens (counting them and what they force)."""
        # Outside the zone the estimate is not refreshed; what is open bounds it from below.
        if left > 2 * max(self._estimate, depth(state)) + ZONE:
            return allowed
        walk = next(iter(self._walks.values()), None) or self._closer.walk(matcher, left, state)
        self._walks = {}
        if not walk or len(walk) > left:  # no end fits any longer: nothing to steer
            return allowed
        self._estimate = len(walk)
        self._walks[walk[0]] = walk
        if left > len(walk) + ZONE:  # one token is unlikely to need more than ZONE more
            return allowed
        scores = np.where(allowed, logits, -np.inf)
        best = np.argpartition(-scores, min(candidates, len(scores) - 1))[:candidates]
        for token in map(int, best):
            if token in self._walks or not np.isfinite(scores[token]):
                continue
            if token in self._closer.eog:
                self._walks[token] = [token]
            elif fits := self._closer.walk(matcher, left, state, first=token):
                self._walks[token] = fits
        narrowed = np.zeros_like(allowed)
        narrowed[list(self._walks)] = True
        return narrowed


def _bits(mask: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Whether each of ids is set in a bitmask row (int32 words, bit i of word i // 32)."""
    return ((mask[ids >> 5] >> (ids & 31)) & 1).astype(bool)
