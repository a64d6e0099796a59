"""Every sampling parameter, through the real clients, against the real model."""

from __future__ import annotations

import math

from tests.conftest import NO_END, chat

STORY = [{"role": "user", "content": "Write a short story about a cat."}]


def text_of(response) -> str:
    return response.json()["choices"][0]["message"]["content"]


def test_greedy_is_repeatable(base_url):
    cached_prompt(base_url)
    a = chat(base_url, messages=STORY, max_tokens=30, temperature=0)
    b = chat(base_url, messages=STORY, max_tokens=30, temperature=0)
    assert text_of(a) == text_of(b)


def cached_prompt(base_url) -> None:
    """The prompt once, so that the requests compared all find it cached in a slot: llama.cpp
    computes a token differently alone than inside a whole prefill, so a repeat is only exact
    between two requests that take the same path (README, response cache)."""
    chat(base_url, messages=STORY, max_tokens=1)


def test_same_seed_same_text_other_seed_other_text(base_url, openai_client):
    cached_prompt(base_url)

    def run(seed):
        out = openai_client.chat.completions.create(
            model="dummy", messages=STORY, max_tokens=30, temperature=1.0, seed=seed
        )
        return out.choices[0].message.content

    assert run(7) == run(7)
    assert len({run(7), run(8), run(9)}) > 1


def test_top_k_one_and_tiny_top_p_are_greedy(base_url):
    cached_prompt(base_url)
    greedy = text_of(chat(base_url, messages=STORY, max_tokens=20, temperature=0))
    top_k = chat(base_url, messages=STORY, max_tokens=20, temperature=1.5, top_k=1, seed=1)
    top_p = chat(base_url, messages=STORY, max_tokens=20, temperature=1.5, top_p=1e-6, seed=2)
    min_p = chat(base_url, messages=STORY, max_tokens=20, temperature=1.5, min_p=1.0, seed=3)
    assert text_of(top_k) == text_of(top_p) == text_of(min_p) == greedy


def test_max_tokens_and_max_completion_tokens_cut_with_length(base_url):
    for field in ("max_tokens", "max_completion_tokens"):
        body = chat(base_url, messages=STORY, temperature=0, **{field: 5}).json()
        assert body["usage"]["completion_tokens"] == 5
        assert body["choices"][0]["finish_reason"] == "length"


def test_stop_string_ends_generation_and_is_not_emitted(base_url):
    free = text_of(chat(base_url, messages=STORY, max_tokens=40, temperature=0))
    word = free.split()[3]  # a word the greedy answer is known to contain
    for stop in (word, [word, "zzzz"]):
        body = chat(base_url, messages=STORY, max_tokens=40, temperature=0, stop=stop).json()
        choice = body["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert word not in choice["message"]["content"]
        assert free.startswith(choice["message"]["content"])


def test_stream_never_leaks_part_of_a_stop_string(openai_client, base_url):
    free = text_of(chat(base_url, messages=STORY, max_tokens=40, temperature=0))
    stop = free[10:22]  # spans several tokens
    chunks = openai_client.chat.completions.create(
        model="dummy", messages=STORY, max_tokens=40, temperature=0, stop=stop, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == free[:10]


def test_n_gives_n_choices_with_their_own_usage(openai_client):
    out = openai_client.chat.completions.create(
        model="dummy", messages=STORY, max_tokens=6, temperature=1.0, n=3, seed=11,
        logit_bias=NO_END,  # sampled: no choice may end before max_tokens
    )  # fmt: skip
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert out.usage.completion_tokens == 18
    assert len({c.message.content for c in out.choices}) > 1


def test_seeded_n_choices_repeat_and_choice_i_uses_seed_plus_i(openai_client):
    def choices(seed: int, n: int) -> list[str]:
        out = openai_client.chat.completions.create(
            model="dummy", messages=STORY, max_tokens=24, temperature=1.0, n=n, seed=seed
        )
        return [c.message.content for c in out.choices]

    first = choices(seed=21, n=3)
    assert choices(seed=21, n=3) == first
    assert len(set(first)) > 1  # each choice its own draw
    assert choices(seed=22, n=1) == first[1:2]


def test_n_streams_every_choice(openai_client):
    chunks = list(
        openai_client.chat.completions.create(
            model="dummy", messages=STORY, max_tokens=5, n=2, stream=True, seed=3
        )
    )
    finished = [c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(finished) == [0, 1]
    roles = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.role]
    assert sorted(roles) == [0, 1]


def test_logprobs_and_top_logprobs(openai_client):
    out = openai_client.chat.completions.create(
        model="dummy", messages=STORY, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = out.choices[0].logprobs.content
    assert len(content) == 6
    assert "".join(t.token for t in content) == out.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3
        assert t.logprob <= 0
        tops = [x.logprob for x in t.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert t.top_logprobs[0].token == t.token  # greedy picks the most likely token
        assert math.isclose(t.logprob, tops[0], abs_tol=1e-6)
        assert bytes(t.bytes).decode() == t.token


def test_streamed_logprobs_come_with_their_tokens(openai_client):
    chunks = openai_client.chat.completions.create(
        model="dummy", messages=STORY, max_tokens=5, temperature=0, logprobs=True,
        top_logprobs=2, stream=True,
    )  # fmt: skip
    entries = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert len(entries) == 5
    assert all(len(t.top_logprobs) == 2 for t in entries)


def test_logit_bias_forces_a_token_in_both_forms(base_url):
    def first_tokens(**extra):
        body = chat(base_url, messages=STORY, max_tokens=4, temperature=0, logprobs=True, **extra)
        choice = body.json()["choices"][0]
        return choice["message"]["content"], [t["token"] for t in choice["logprobs"]["content"]]

    _, free = first_tokens()
    # A +100 bias on one token id makes it win every step; HF's list form is a bias per id.
    for bias in ({"28": 100}, [0.0] * 28 + [100.0]):
        text, tokens = first_tokens(logit_bias=bias)
        assert len(set(tokens)) == 1 and tokens != free
        assert text == tokens[0] * 4


def test_penalties_change_a_repetitive_answer(base_url):
    prompt = [{"role": "user", "content": "What is the capital of France?"}]  # greedy loops
    plain = text_of(chat(base_url, messages=prompt, max_tokens=30, temperature=0))
    for field, value in (
        ("frequency_penalty", 2.0),
        ("presence_penalty", 2.0),
        ("repetition_penalty", 1.8),
    ):
        other = text_of(
            chat(base_url, messages=prompt, max_tokens=30, temperature=0, **{field: value})
        )
        assert other != plain, field
