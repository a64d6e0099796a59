"""Continuous batching: determinism under load, many streams at once, disconnects, prefix reuse."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from openai import AsyncOpenAI

from tests.conftest import NO_END, PARALLEL

PROMPTS = [
    "Write a short story about a cat.",
    "List the days of the week.",
    "What is the capital of France?",
    "Explain what a computer is.",
    "Give me three tips for sleeping well.",
    "Describe the sea.",
    "What is 2 + 2?",
    "Name some colours.",
    "Why is the sky blue?",
    "Tell me about dogs.",
    "How do plants grow?",
    "What is music?",
    "Write a haiku about rain.",
    "What do bees make?",
    "Describe a city at night.",
    "What is a triangle?",
]


def messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


async def _answer(client: AsyncOpenAI, prompt: str, stream: bool = False, **kw) -> str:
    if not stream:
        out = await client.chat.completions.create(model="dummy", messages=messages(prompt), **kw)
        return out.choices[0].message.content
    chunks = await client.chat.completions.create(
        model="dummy", messages=messages(prompt), stream=True, **kw
    )
    return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])


@pytest.fixture
def aclient(base_url):
    return AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", _strict_response_validation=True)


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.9, "seed": 1234}])
def test_same_text_alone_and_among_eight(aclient, sampling):
    kw = {"max_tokens": 40, **sampling}

    async def run():
        alone = await _answer(aclient, PROMPTS[0], **kw)
        together = await asyncio.gather(
            *(_answer(aclient, p, **kw) for p in [PROMPTS[0]] + PROMPTS[1:PARALLEL])
        )
        return alone, together[0]

    alone, among = asyncio.run(run())
    assert alone == among


def test_sixteen_streams_each_get_their_own_text(aclient):
    kw = {"max_tokens": 24, "temperature": 0}

    async def run():
        solo = [await _answer(aclient, p, **kw) for p in PROMPTS]
        streamed = await asyncio.gather(*(_answer(aclient, p, stream=True, **kw) for p in PROMPTS))
        return solo, streamed

    solo, streamed = asyncio.run(run())
    assert len(set(solo)) > 8  # different prompts, different answers: a mix-up would show
    assert streamed == solo


def _sequences(base_url: str) -> dict:
    return httpx.get(f"{base_url}/info").json()["sequences"]


def test_disconnected_streams_free_their_slots(base_url):
    body = {
        "messages": messages(PROMPTS[0]),
        "max_tokens": 900,
        "stream": True,
        "logit_bias": NO_END,
    }

    async def open_and_drop():
        async with httpx.AsyncClient(timeout=60) as client:
            for _ in range(PARALLEL):
                async with client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            break  # the first chunk arrived: hang up mid-generation

    asyncio.run(open_and_drop())
    deadline = time.monotonic() + 10
    while _sequences(base_url) != {"running": 0, "waiting": 0}:
        assert time.monotonic() < deadline, _sequences(base_url)
        time.sleep(0.05)
    r = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"messages": messages("Hi"), "max_tokens": 4},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


def test_non_stream_client_that_leaves_frees_its_slot(base_url):
    body = {"messages": messages(PROMPTS[0]), "max_tokens": 900, "logit_bias": NO_END}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=1.0)
    deadline = time.monotonic() + 10
    while _sequences(base_url)["running"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_next_turn_reuses_the_cached_prefix(base_url):
    turn = messages("Tell me about the moon.")
    first = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"messages": turn, "max_tokens": 20, "temperature": 0},
        timeout=60,
    ).json()
    turn += [
        {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
        {"role": "user", "content": "And about the sun?"},
    ]
    second = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"messages": turn, "max_tokens": 5, "temperature": 0},
        timeout=60,
    ).json()
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= first["usage"]["prompt_tokens"]
    assert cached < second["usage"]["prompt_tokens"]
