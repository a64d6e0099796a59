"""Continuous batching: one thread per model, one forward per step for every running sequence.

Each step admits waiting sequences into free KV slots (reusing a cached prefix where a finished
sequence left one), gives every decoding sequence one token and the prefilling ones chunks of
their prompt within the token budget, runs the batch once, samples, and emits the events.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

import numpy as np

from chatd.engine.constraints import allowed_tokens, fill_masks
from chatd.engine.runners.base import BatchItem, Runner
from chatd.engine.sampler import adjust_logits, choose, log_softmax_at
from chatd.engine.sequence import Sequence
from chatd.engine.types import Load, TokenEvent, TokenLogprob, TopLogprob

log = logging.getLogger(__name__)

Events = list[tuple[Sequence, TokenEvent]]


class Scheduler:
    def __init__(self, runner: Runner, on_events: Callable[[Events], None]):
        self.runner = runner
        self.tokenizer = runner.tokenizer
        self._on_events = on_events
        self._cv = threading.Condition()
        self._inbox: deque[Sequence] = deque()
        self._aborted: set[str] = set()
        self._stopped = False
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._free_slots = set(range(runner.n_slots))
        self._slot_tokens: list[list[int]] = [[] for _ in range(runner.n_slots)]
        self._thread = threading.Thread(target=self._loop, name="chatd-scheduler", daemon=True)

    # -- called from other threads ------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, seq: Sequence) -> None:
        with self._cv:
            self._inbox.append(seq)
            self._cv.notify()

    def abort(self, request_id: str) -> None:
        """Idempotent: an unknown or finished id is ignored at the next step."""
        with self._cv:
            self._aborted.add(request_id)
            self._cv.notify()

    def load(self) -> Load:
        """A snapshot, read from another thread."""
        queued = len(self.waiting) + len(self._inbox)
        return Load(running=len(self.running), waiting=max(0, queued - len(self._free_slots)))

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout=10)

    # -- the scheduler thread -----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._inbox or self._aborted or self.waiting or self.running):
                    if self._stopped:
                        return
                    self._cv.wait()
                if self._stopped:
                    return
                self.waiting.extend(self._inbox)
                self._inbox.clear()
                aborted, self._aborted = self._aborted, set()
            self._cancel(aborted)
            try:
                self.step()
            except Exception as exc:  # a broken step must not kill the thread: fail its batch
                log.exception("scheduler step failed")
                self._fail_all(f"generation failed: {exc}")

    def step(self) -> None:
        self._admit()
        items, sampling = self._plan()
        if not items:
            return
        logits = self.runner.forward(items)
        allowed = self._grammar_masks(sampling)
        events: Events = []
        for seq, row in zip(sampling, logits, strict=True):
            events.append((seq, self._advance(seq, row, allowed.get(seq.id))))
        for seq, event in events:
            if event.done:
                self._release(seq)
        self._on_events(events)

    def _admit(self) -> None:
        while self.waiting and self._free_slots:
            seq = self.waiting.popleft()
            slot, reused = self._best_slot(seq.request.prompt, _reusable(seq))
            self._free_slots.remove(slot)
            reused = self.runner.truncate(slot, reused)
            seq.slot, seq.n_cached, seq.n_reused = slot, reused, reused
            self.running.append(seq)

    def _best_slot(self, prompt: list[int], reusable: int) -> tuple[int, int]:
        """The free slot whose cached tokens share the longest prefix (up to `reusable`
        tokens) with the prompt."""
        best, best_len = min(self._free_slots), 0
        for slot in sorted(self._free_slots):
            n = _common_prefix(self._slot_tokens[slot], prompt)
            if n > best_len:
                best, best_len = slot, n
        # At least the last prompt token must run again: its logits give the first sample.
        return best, min(best_len, len(prompt) - 1, reusable)

    def _plan(self) -> tuple[list[BatchItem], list[Sequence]]:
        """Decoding sequences first (one token each), then prompt chunks within the budget."""
        budget = self.runner.max_batch_tokens
        items: list[BatchItem] = []
        sampling: list[Sequence] = []
        for seq in sorted(self.running, key=lambda s: s.pending > 1):
            n = min(seq.pending, budget)
            if n <= 0:
                break
            start = seq.n_cached
            done = start + n == len(seq.tokens)
            tokens = seq.tokens[start : start + n]
            items.append(BatchItem(seq.slot, tokens, start, done, seq.request.images))
            seq.n_cached += n
            budget -= n
            if done:
                sampling.append(seq)
        return items, sampling

    def _grammar_masks(self, sampling: list[Sequence]) -> dict[str, np.ndarray]:
        """The allowed tokens of every constrained sequence, computed together."""
        constrained = [s for s in sampling if s.constraint and s.constraint.active]
        if not constrained:
            return {}
        n_vocab = self.tokenizer.n_vocab
        masks = fill_masks([s.constraint for s in constrained], n_vocab)
        return {s.id: allowed_tokens(m, n_vocab) for s, m in zip(constrained, masks, strict=True)}

    def _advance(self, seq: Sequence, logits: np.ndarray, allowed=None) -> TokenEvent:
        """Sample the next token of seq and turn it into text, applying stop rules."""
        params = seq.request.sampling
        logits = adjust_logits(logits, seq.sampler, allowed)
        token = choose(logits, params, seq.sampler.rng)
        seq.sampler.accept(token)
        seq.tokens.append(token)
        event = TokenEvent()
        finish = None
        if token in self.tokenizer.eog:  # not part of the answer: no text, no logprobs entry
            text, finish = seq.detokenizer.flush(), "stop"
        else:
            text = seq.detokenizer.step(token)
            event.logprobs = self._logprobs(logits, token, params.top_logprobs, params)
        constraint = seq.constraint
        if constraint:
            constraint.consume(token, text)
            if constraint.error:
                event = TokenEvent(error=f"grammar: {constraint.error}")
                self._count(seq, event)
                return event
        event.text, matched = seq.stop.feed(text)
        if matched:
            finish = "stop"
        elif finish is None and (
            seq.n_generated >= seq.request.max_tokens or len(seq.tokens) >= self.runner.n_ctx
        ):
            finish = "length"
            event.text += seq.stop.feed(seq.detokenizer.flush())[0]
        if finish and not matched:
            event.text += seq.stop.flush()
        event.finish_reason = finish
        self._count(seq, event)
        return event

    def _logprobs(self, logits, token, k, params) -> list[TokenLogprob]:
        if not params.logprobs:
            return []
        lp, top = log_softmax_at(logits, token, k)
        tok = self.tokenizer
        return [
            TokenLogprob(
                tok.token_text[token],
                lp,
                list(tok.token_bytes[token]),
                [TopLogprob(tok.token_text[i], v, list(tok.token_bytes[i])) for i, v in top],
            )
        ]

    def _release(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
            # What follows an image depends on the image, not only on the tokens.
            self._slot_tokens[seq.slot] = seq.tokens[: min(seq.n_cached, _reusable(seq))]
            self._free_slots.add(seq.slot)

    def _cancel(self, ids: set[str]) -> None:
        if not ids:
            return
        for seq in [s for s in self.running if s.id in ids]:
            self._release(seq)
        self.waiting = deque(s for s in self.waiting if s.id not in ids)

    def _fail_all(self, message: str) -> None:
        events: Events = []
        for seq in list(self.running):
            self._release(seq)
            # What the cache holds after a failed forward is unknown: forget the slot's prefix.
            self._slot_tokens[seq.slot] = []
            event = TokenEvent(error=message)
            self._count(seq, event)
            events.append((seq, event))
        self._on_events(events)

    @staticmethod
    def _count(seq: Sequence, event: TokenEvent) -> None:
        event.prompt_tokens = seq.n_prompt
        event.completion_tokens = seq.n_generated
        event.cached_tokens = seq.n_reused


def _reusable(seq: Sequence) -> int:
    """How many of the sequence's tokens a later prompt may take from the cache."""
    images = seq.request.images
    return len(seq.tokens) if images is None else images.reusable


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
