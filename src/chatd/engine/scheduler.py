"""Continuous batching: one forward per step for every running sequence.

Each step admits waiting sequences into free KV slots (reusing a cached prefix where a finished
sequence left one), gives every decoding sequence one token and the prefilling ones chunks of
their prompt within the token budget, runs the batch once, samples, and returns the events.
With speculation on, a decoding sequence may also feed a draft of its next tokens and emit
several in one step (engine/speculative.py).
`Scheduler.step` runs one such step on the caller's thread (a test steps it by hand);
`SchedulerThread` runs the steps on a thread of its own while there is work.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

import numpy as np

from chatd.engine.closing import CANDIDATES
from chatd.engine.constraints import allowed_tokens, fill_masks
from chatd.engine.prefix_store import PrefixStore
from chatd.engine.runners.base import BatchItem, Runner
from chatd.engine.sampler import log_softmax_at, sample_step
from chatd.engine.sequence import Sequence, Status
from chatd.engine.slots import SlotTable
from chatd.engine.speculative import MAX_DRAFT, MAX_DRAFTING_ROWS, Speculation, verify
from chatd.engine.types import Load, TokenEvent, TokenLogprob, TopLogprob

log = logging.getLogger(__name__)

Events = list[tuple[Sequence, TokenEvent]]


class Scheduler:
    def __init__(
        self,
        runner: Runner,
        prefix_store: PrefixStore | None = None,
        speculation: Speculation | None = None,
    ):
        self.runner = runner
        self.speculation = speculation  # None: no drafts
        self.tokenizer = runner.tokenizer
        # Guards what other threads hand in (submissions, aborts); SchedulerThread waits on it.
        self.wakeup = threading.Condition()
        self._inbox: deque[Sequence] = deque()
        self._aborted: set[str] = set()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.slots = SlotTable(runner.n_slots)
        self.prefix_store = prefix_store

    # -- safe from any thread -----------------------------------------------------------------

    def submit(self, seq: Sequence) -> None:
        with self.wakeup:
            self._inbox.append(seq)
            self.wakeup.notify()

    def abort(self, request_id: str) -> None:
        """Idempotent: an unknown or finished id is ignored at the next step."""
        with self.wakeup:
            self._aborted.add(request_id)
            self.wakeup.notify()

    def load(self) -> Load:
        """A snapshot, read from another thread."""
        queued = len(self.waiting) + len(self._inbox)
        return Load(running=len(self.running), waiting=max(0, queued - self.slots.n_free))

    def has_work(self) -> bool:
        return bool(self._inbox or self._aborted or self.waiting or self.running)

    def take_drafts(self) -> tuple[int, int]:
        """Draft tokens fed and accepted since the last call (on the stepping thread)."""
        return self.speculation.take() if self.speculation else (0, 0)

    # -- one thread at a time: the step ---------------------------------------------------------

    def step(self) -> Events:
        """Takes in what was submitted and aborted, then runs one batch: the events it made."""
        with self.wakeup:
            self.waiting.extend(self._inbox)
            self._inbox.clear()
            aborted, self._aborted = self._aborted, set()
        self._abort(aborted)
        try:
            return self._run_batch()
        except Exception as exc:  # a broken step must not stop the scheduler: fail its batch
            log.exception("scheduler step failed")
            return self._fail_all(f"generation failed: {exc}")

    def _run_batch(self) -> Events:
        self._admit()
        items, sampling = self._plan()
        if not items:
            return []
        logits = self.runner.forward(items)
        events: Events = []
        starts = self._first_rows(sampling, len(logits))
        firsts = logits if len(starts) == len(logits) else logits[starts]
        tokens, adjusted = self._sample(sampling, firsts)
        for seq, at, token, row in zip(sampling, starts, tokens, adjusted, strict=True):
            if seq.draft:
                rows = logits[at : at + 1 + len(seq.draft)]
                events += self._verify(seq, token, row, rows)
            else:
                events.append((seq, self._advance(seq, token, row)))
        for seq, event in events:
            if event.done:
                self._release(seq, Status.FINISHED)
        return events

    def _admit(self) -> None:
        while self.waiting and self.slots.n_free:
            seq = self.waiting.popleft()
            slot, reused = self.slots.take(seq.request.prompt, seq.reusable)
            if self.prefix_store is not None:
                reused = self._swap_prefix(slot, seq, reused)
            reused = self.runner.truncate(slot, reused)
            seq.slot, seq.n_cached, seq.n_reused = slot, reused, reused
            seq.status = Status.RUNNING
            self.running.append(seq)

    def _swap_prefix(self, slot: int, seq: Sequence, reused: int) -> int:
        """Saves what the slot is about to lose to the prefix store, and restores a longer stored
        prefix of the prompt into it: how many prompt tokens the slot then holds."""
        store, cached, prompt = self.prefix_store, self.slots.cached(slot), seq.request.prompt
        try:
            if len(cached) - reused >= store.block:  # a block or more is about to be overwritten
                store.save(cached, lambda: self.runner.save_prefix(slot, len(cached)))
            match = store.find(prompt, min(len(prompt) - 1, seq.reusable))
            if match is None or match.n_tokens <= reused:
                return reused
            if not self.runner.restore_prefix(slot, match.state):
                return 0
        except Exception:  # the store only saves time: answer without it
            log.exception("prefix store: saving or restoring a slot failed")
            return 0  # what the slot holds is unknown: prefill the whole prompt
        store.restored(match)
        return match.n_tokens

    def _plan(self) -> tuple[list[BatchItem], list[Sequence]]:
        """Decoding sequences first (one token each, and a draft where it pays), then prompt
        chunks within the budget."""
        budget = self.runner.max_batch_tokens
        items: list[BatchItem] = []
        sampling: list[Sequence] = []
        n_decoding = sum(1 for s in self.running if s.pending == 1)
        # Drafts take what the budget leaves beyond one token per decoding sequence.
        spare = budget - n_decoding if self._drafting(n_decoding) else 0
        for seq in sorted(self.running, key=lambda s: s.pending > 1):
            n = min(seq.pending, budget)
            if n <= 0:
                break
            start = seq.n_cached
            done = start + n == len(seq.tokens)
            if done and n == 1 and spare > 0:
                seq.draft = self._draft(seq, spare, n_decoding)
                spare -= len(seq.draft)
            tokens = seq.tokens[start : start + n] + seq.draft
            n_logits = 1 + len(seq.draft)
            items.append(BatchItem(seq.slot, tokens, start, done, seq.request.images, n_logits))
            seq.n_cached += len(tokens)
            budget -= len(tokens)
            if done:
                sampling.append(seq)
        return items, sampling

    def _drafting(self, n_decoding: int) -> bool:
        """Whether this step drafts: few enough rows that extra positions cost little."""
        return self.speculation is not None and 0 < n_decoding <= MAX_DRAFTING_ROWS

    def _draft(self, seq: Sequence, spare: int, rows: int) -> list[int]:
        """seq's next tokens as its n-grams predict them: as many as pay for themselves, no
        more than it may still emit after the step's first token, nor than its context holds."""
        if seq.request.images is not None:  # positions after images are the runner's business
            return []
        limit = min(spare, self._tokens_left(seq) - 1, MAX_DRAFT)
        size = self.speculation.draft_size(seq.drafter.acceptance, rows, limit)
        draft = seq.drafter.propose(seq.tokens, size)
        if not draft:
            seq.drafter.update(0, 0)
        return draft

    def _verify(self, seq: Sequence, token: int, row, rows: np.ndarray) -> Events:
        """Emits seq's tokens from the rows of its last token (already sampled: `token`, drawn
        from `row`) and of its draft, while the draft holds; forgets the cached positions of the
        draft tokens it did not take."""
        draft, seq.draft = seq.draft, []

        def advance(logits: np.ndarray, i: int) -> TokenEvent:
            if i == 0:
                return self._advance(seq, token, row)
            # The grammar has moved on by the tokens emitted before this row: a fresh mask.
            (drawn,), (adjusted,) = self._sample([seq], logits[None])
            return self._advance(seq, drawn, adjusted)

        base = len(seq.tokens)
        events, accepted = verify(seq.tokens, draft, rows, advance)
        # Tokens a grammar forced after the last emitted one may match the draft too, but one
        # token must stay uncached: feeding it gives the next step's logits.
        accepted = min(accepted, len(seq.tokens) - base - 1)
        seq.n_cached = base + accepted
        if accepted < len(draft):  # a runner that cannot cut there forgets more: fed again
            seq.n_cached = self.runner.truncate(seq.slot, seq.n_cached)
        seq.drafter.update(len(draft), accepted)
        self.speculation.drafted += len(draft)
        self.speculation.accepted += accepted
        return [(seq, event) for event in events]

    @staticmethod
    def _first_rows(sampling: list[Sequence], n_rows: int) -> list[int]:
        """Where each sampling sequence's logits rows begin: one row each, a drafted one more."""
        starts, at = [], 0
        for seq in sampling:
            starts.append(at)
            at += 1 + len(seq.draft)
        if at != n_rows:
            raise RuntimeError(f"the runner gave {n_rows} logits rows for {at}")
        return starts

    def _grammar_masks(self, sampling: list[Sequence]) -> dict[str, np.ndarray]:
        """The allowed tokens of every constrained sequence, computed together."""
        constrained = [s for s in sampling if s.constraint and s.constraint.active]
        if not constrained:
            return {}
        n_vocab = self.tokenizer.n_vocab
        masks = fill_masks([s.constraint for s in constrained], n_vocab)
        return {s.id: allowed_tokens(m, n_vocab) for s, m in zip(constrained, masks, strict=True)}

    # -- from logits to an event, in stages whose order matters ---------------------------------

    def _sample(self, sampling: list[Sequence], logits: np.ndarray) -> tuple[list, list]:
        """Every sampling sequence's next token, drawn in one pass over the step's rows, and
        the adjusted row each was drawn from where its logprobs are asked for (else None)."""
        allowed = self._grammar_masks(sampling)
        masks = []
        for seq, row in zip(sampling, logits, strict=True):
            mask = allowed.get(seq.id)
            masks.append(None if mask is None else self._within_budget(seq, row, mask))
        return sample_step(logits, [seq.sampler for seq in sampling], masks)

    def _advance(self, seq: Sequence, token: int, logits: np.ndarray | None) -> TokenEvent:
        """Take seq's sampled token and turn it into text, applying stop rules."""
        seq.sampler.accept(token)
        seq.tokens.append(token)
        event = self._detokenize(seq, token, logits)
        event = self._follow_grammar(seq, token, event)
        if not event.error:
            self._match_stops(seq, event)
            self._fast_forward(seq, event)
            self._check_length(seq, event)
            if event.finish_reason:  # text held back for a stop string that never came
                event.text += seq.stop.flush()
        self._count(seq, event)
        return event

    def _detokenize(self, seq: Sequence, token: int, logits: np.ndarray) -> TokenEvent:
        """The token's text (all that is left, at an end of turn) and its logprobs."""
        if token in self.tokenizer.eog:  # not part of the answer: no text, no logprobs entry
            return TokenEvent(text=seq.detokenizer.flush(), finish_reason="stop")
        params = seq.request.sampling
        text = seq.detokenizer.step(token)
        return TokenEvent(text=text, logprobs=self._logprobs(logits, token, params))

    @staticmethod
    def _follow_grammar(seq: Sequence, token: int, event: TokenEvent) -> TokenEvent:
        """Advances the sequence's grammar; a token it cannot take ends the sequence."""
        constraint = seq.constraint
        if constraint:
            constraint.consume(token, event.text)
            if constraint.error:
                return TokenEvent(error=f"grammar: {constraint.error}")
        return event

    def _within_budget(self, seq: Sequence, logits: np.ndarray, allowed: np.ndarray):
        """Near max_tokens, only tokens that leave room for a valid end (engine/closing.py):
        a greedy sequence needs only its best candidate checked."""
        candidates = 1 if seq.request.sampling.temperature <= 0 else CANDIDATES
        return seq.constraint.within_budget(allowed, logits, self._tokens_left(seq), candidates)

    def _fast_forward(self, seq: Sequence, event: TokenEvent) -> None:
        """Takes the tokens the grammar forces after the sampled one into this same event,
        each through the detokenizer and stop strings, within max_tokens; the next forward
        feeds them as one chunk. A grammar that can take nothing more ends the answer."""
        constraint = seq.constraint
        if event.finish_reason or not (constraint and constraint.active):
            return
        for token in constraint.forced(self._tokens_left(seq)):
            seq.tokens.append(token)
            seq.sampler.accept(token)
            piece = TokenEvent(seq.detokenizer.step(token), self._forced_logprobs(seq, token))
            self._match_stops(seq, piece)
            event.text += piece.text
            event.logprobs += piece.logprobs
            if piece.finish_reason:
                event.finish_reason = piece.finish_reason
                return
        if constraint.finished:  # the end token would be the only choice: no step for it
            event.text += seq.stop.feed(seq.detokenizer.flush())[0]
            event.finish_reason = "stop"

    def _tokens_left(self, seq: Sequence) -> int:
        return min(seq.request.max_tokens - seq.n_generated, self.runner.n_ctx - len(seq.tokens))

    @staticmethod
    def _match_stops(seq: Sequence, event: TokenEvent) -> None:
        """Holds back what may begin a stop string; cuts the text at one that matched."""
        event.text, matched = seq.stop.feed(event.text)
        if matched:
            event.finish_reason = "stop"

    def _check_length(self, seq: Sequence, event: TokenEvent) -> None:
        """Ends a sequence at max_tokens or a full context, with what its detokenizer held."""
        if event.finish_reason is None and (
            seq.n_generated >= seq.request.max_tokens or len(seq.tokens) >= self.runner.n_ctx
        ):
            event.finish_reason = "length"
            event.text += seq.stop.feed(seq.detokenizer.flush())[0]

    def _logprobs(self, logits, token, params) -> list[TokenLogprob]:
        if not params.logprobs:
            return []
        lp, top = log_softmax_at(logits, token, params.top_logprobs)
        return [self._logprob_entry(token, lp, top)]

    def _forced_logprobs(self, seq: Sequence, token: int) -> list[TokenLogprob]:
        """A forced token was the only one the grammar allowed: under the masked distribution
        that logprobs report, its logprob is 0 and it is its own only alternative. (The model
        never scored it: no logits are computed at a forced position.)"""
        params = seq.request.sampling
        if not params.logprobs:
            return []
        return [self._logprob_entry(token, 0.0, [(token, 0.0)] if params.top_logprobs else [])]

    def _logprob_entry(self, token: int, lp: float, top) -> TokenLogprob:
        tok = self.tokenizer
        return TokenLogprob(
            tok.token_text[token],
            lp,
            list(tok.token_bytes[token]),
            [TopLogprob(tok.token_text[i], v, list(tok.token_bytes[i])) for i, v in top],
        )

    # -- ends -----------------------------------------------------------------------------------

    def _release(self, seq: Sequence, status: Status, keep_cache: bool = True) -> None:
        """Ends seq; a running one frees its slot, which keeps what a later prompt may reuse."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
            # What follows an image depends on the image, not only on the tokens.
            cached = seq.tokens[: min(seq.n_cached, seq.reusable)] if keep_cache else []
            self.slots.release(seq.slot, cached)
        seq.status = status

    def _abort(self, ids: set[str]) -> None:
        if not ids:
            return
        for seq in [s for s in (*self.running, *self.waiting) if s.id in ids]:
            self._release(seq, Status.ABORTED)
        self.waiting = deque(s for s in self.waiting if s.status is Status.WAITING)

    def _fail_all(self, message: str) -> Events:
        events: Events = []
        for seq in list(self.running):
            # What the cache holds after a failed forward is unknown: forget the slot's prefix.
            self._release(seq, Status.FINISHED, keep_cache=False)
            event = TokenEvent(error=message)
            self._count(seq, event)
            events.append((seq, event))
        return events

    @staticmethod
    def _count(seq: Sequence, event: TokenEvent) -> None:
        event.prompt_tokens = seq.n_prompt
        event.completion_tokens = seq.n_generated
        event.cached_tokens = seq.n_reused


class SchedulerThread:
    """Runs a scheduler's steps on a thread of its own, asleep while there is nothing to do,
    and hands each step's events to `on_events` (on that thread)."""

    def __init__(self, scheduler: Scheduler, on_events: Callable[[Events], None]):
        self._scheduler, self._on_events = scheduler, on_events
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="chatd-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._scheduler.wakeup:
            self._stopped = True
            self._scheduler.wakeup.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        scheduler = self._scheduler
        while True:
            with scheduler.wakeup:
                while not (scheduler.has_work() or self._stopped):
                    scheduler.wakeup.wait()
                if self._stopped:
                    return
            events = scheduler.step()
            if events:
                self._on_events(events)
