"""Speculative decoding end to end: two real chatds on SmolLM2, one drafting all it can
(`--speculative ngram --speculative-cost 0`), one not, must give the same greedy answers and
usage, one request at a time and two at once, on prompts whose answers repeat their input.

llama.cpp computes a row of up to 9 tokens exactly as it computes them one by one (measured:
bit-identical logits, with rejected drafts removed in between too), so drafts cannot change
the text. A prompt prefilled after a cached prefix can (cache/keys.py): every request here
opens with a system message of its own, the same on both servers, so that a prompt never
reuses more than the template's first tokens, and both servers compute it alike."""

from __future__ import annotations

import json
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from chatd.models.sources import SMOLLM2_ID
from tests.conftest import Server, chat, metric

PROMPTS = [
    "Repeat this list exactly: apples, pears, plums, cherries, apples, pears, plums, cherries.",
    "Copy this code and add a docstring:\n"
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n",
    'Extract the name and the city as JSON from: "Ada Lovelace lived in London. '
    'Ada Lovelace wrote the first program."',
    "Quote the first sentence of this passage: The quick brown fox jumps over the lazy dog. "
    "The dog sleeps.",
    "Write the numbers from one to twenty in words, separated by commas.",
    "Say hello.",
]
ARGS = ("--parallel", "2", "--ctx", "1024", "--cache-url", "off")


@pytest.fixture(scope="module")
def servers():
    with (
        Server(*ARGS, "--speculative", "off") as off,
        Server(*ARGS, "--speculative", "ngram", "--speculative-cost", "0") as on,
    ):
        off.wait_ready()
        on.wait_ready()
        yield off.url, on.url


def answer(url: str, prompt: str, **body) -> tuple[str, str, tuple[int, int]]:
    body = {"temperature": 0, "max_tokens": 80, **body}
    own = zlib.crc32(json.dumps([prompt, body], sort_keys=True).encode())
    messages = [
        {"role": "system", "content": f"Conversation {own}. Answer the user."},
        {"role": "user", "content": prompt},
    ]
    r = chat(url, messages=messages, **body)
    assert r.status_code == 200, r.text
    out = r.json()
    choice = out["choices"][0]
    # Not the cached tokens: which slot a request takes depends on what ran before.
    usage = out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"]
    return choice["message"]["content"], choice["finish_reason"], usage


def test_greedy_answers_with_drafts_are_the_answers_without(servers):
    off, on = servers
    for prompt in PROMPTS:
        assert answer(on, prompt) == answer(off, prompt), prompt
    drafted = metric(on, "chatd_draft_tokens_total", model=SMOLLM2_ID)
    accepted = metric(on, "chatd_draft_accepted_tokens_total", model=SMOLLM2_ID)
    assert 0 < accepted < drafted  # drafts were made, some taken and some not
    assert metric(off, "chatd_draft_tokens_total", model=SMOLLM2_ID) == 0


def test_greedy_answers_with_drafts_are_the_answers_without_two_at_a_time(servers):
    off, on = servers
    pairs = list(zip(PROMPTS[::2], PROMPTS[1::2], strict=True))
    with ThreadPoolExecutor(2) as pool:
        for pair in pairs:
            both_on = list(pool.map(lambda p: answer(on, p), pair))
            both_off = list(pool.map(lambda p: answer(off, p), pair))
            assert both_on == both_off, pair


@pytest.mark.parametrize("seed", [1, 2])
def test_seeded_sampling_with_drafts_draws_what_it_draws_without(servers, seed):
    off, on = servers
    body = {"temperature": 0.8, "seed": seed}
    for prompt in PROMPTS[:2]:
        assert answer(on, prompt, **body) == answer(off, prompt, **body)


def test_stop_strings_and_max_tokens_cut_where_they_cut_without_drafts(servers):
    off, on = servers
    for prompt in PROMPTS[:3]:
        for body in ({"stop": ["pears", "return"]}, {"max_tokens": 7}):
            got = answer(on, prompt, **body)
            assert got == answer(off, prompt, **body), (prompt, body)
            assert "pears" not in got[0] and "return" not in got[0] or "stop" not in body


def test_constrained_answers_with_drafts_follow_the_schema(servers):
    off, on = servers
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "city": {"type": "string"}},
        "required": ["name", "city"],
    }
    body = {
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    }
    got = answer(on, PROMPTS[2], max_tokens=200, **body)
    assert got == answer(off, PROMPTS[2], max_tokens=200, **body)
    assert got[1] != "stop" or set(json.loads(got[0])) == {"name", "city"}


# -- the transformers runner: a drafted row joins the decoding forward --------------------------


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_transformers_greedy_tokens_with_drafts_are_the_tokens_without(kind, tmp_path):
    """Tiny random models (gemma2 with sliding-window layers), stepped by hand: a row of
    [last token, draft] gives the logits of its one-token steps."""
    from chatd.engine.runners.transformers import TransformersRunner
    from chatd.engine.scheduler import Scheduler
    from chatd.engine.sequence import Sequence
    from chatd.engine.speculative import Speculation
    from chatd.engine.types import GenerationRequest, SamplingParams
    from tests.tiny_models import build

    runner = TransformersRunner(build(kind, tmp_path / kind), n_slots=2, n_ctx=256)
    # Prompts that repeat, so that drafts are found; two at once share the decoding forward.
    prompts = [
        runner.tokenizer.encode("one two three four " * 4),
        runner.tokenizer.encode("ab " * 9),
    ]

    def run(speculation):
        scheduler = Scheduler(runner, speculation=speculation)
        seqs = []
        for i, prompt in enumerate(prompts):
            request = GenerationRequest(f"{kind}-{i}", prompt, SamplingParams(temperature=0), 40)
            seqs.append(Sequence(request, runner.tokenizer))
            scheduler.submit(seqs[-1])
        while scheduler.has_work():
            scheduler.step()
        return [s.tokens for s in seqs], scheduler.take_drafts()

    plain, _ = run(None)
    drafted, (n_drafted, n_accepted) = run(Speculation(0.0))
    assert drafted == plain and 0 < n_accepted < n_drafted
