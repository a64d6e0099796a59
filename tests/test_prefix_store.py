"""The prefix store on a real chatd (on by default): a conversation whose slot another one took
gets its prompt back from host memory, and answers as it did from its own slot."""

from __future__ import annotations

import httpx

from chatd.models.sources import SMOLLM2_ID
from tests.conftest import metric


def conversation(name: str) -> list[dict]:
    system = f"You are assistant {name}. " + " ".join(
        f"Rule {name}{k}: be brief." for k in range(25)
    )
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Hello {name}, what can you do?"},
        {"role": "assistant", "content": "I can answer questions about many topics."},
        {"role": "user", "content": "Name three colours."},
    ]


def ask(url: str, messages: list[dict], model: str | None = None) -> tuple[str, dict]:
    body = {"messages": messages, "max_tokens": 12, "temperature": 0}
    if model:
        body["model"] = model
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"], r.json()["usage"]


def restored_after_others(url: str, others: int, model: str | None = None) -> None:
    """A's prompt from its own slot, then `others` conversations that take every slot (A's
    last), then A's prompt again: it is restored from the store, whole but its last token, and
    answers as the slot did (the same cached tokens, the same last token run alone)."""
    a = conversation("A")
    ask(url, a, model)  # the slot now holds A's prompt
    from_slot, usage = ask(url, a, model)
    n = usage["prompt_tokens"] - 1
    assert usage["prompt_tokens_details"]["cached_tokens"] == n
    before = metric(url, "chatd_prefix_store_restored_tokens_total", model=model or SMOLLM2_ID)
    for k in range(others):
        _, other = ask(url, conversation(f"other{k}"), model)
        assert other["prompt_tokens_details"]["cached_tokens"] < n // 4  # took A's slot or none

    from_store, usage = ask(url, a, model)

    # Without the store: only the template's first tokens, shared with the others.
    assert usage["prompt_tokens_details"]["cached_tokens"] == n
    assert from_store == from_slot
    after = metric(url, "chatd_prefix_store_restored_tokens_total", model=model or SMOLLM2_ID)
    assert after - before == n
    assert metric(url, "chatd_prefix_store_bytes", model=model or SMOLLM2_ID) > 0


def test_llamacpp_restores_a_conversation_whose_slot_another_took(one_slot_url):
    restored_after_others(one_slot_url, others=1)


def test_transformers_restores_a_conversation_whose_slots_others_took(vision_url):
    restored_after_others(vision_url, others=4, model="tiny-llama")  # its server has 4 slots
