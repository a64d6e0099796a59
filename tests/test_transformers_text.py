"""Text models on the transformers runner: the seed's Gemma-2 (a tiny random one, sliding-window
layers included), a tiny llama, and SmolLM2 dequantised from its GGUF for a real-text check."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import httpx

from tests.conftest import SMOLLM2_TRANSFORMERS, SNIPPET_TEXT_MODEL, STRICT_MODEL, chat


def answer(url: str, model: str, text: str, **extra) -> dict:
    body = {"temperature": 0, "max_tokens": 16, **extra}
    r = chat(url, model=model, messages=[{"role": "user", "content": text}], **body)
    assert r.status_code == 200, r.text
    return r.json()


def test_seed_text_snippet_on_a_gemma2_architecture(vision_url, capsys):
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=f"{vision_url}/v1/", api_key="hf_***")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    stream = client.chat.completions.create(
        model="google/gemma-2-2b-it", messages=messages, max_tokens=500, stream=True
    )
    deltas = []  # beside the snippet's loop: what each chunk carried
    for chunk in stream:
        print(chunk.choices[0].delta.content, end="")
        deltas.append(chunk.choices[0].delta.content)
    printed = capsys.readouterr().out
    assert printed.strip() and all(isinstance(d, str) for d in deltas)


def test_concurrent_requests_get_their_solo_answers(vision_url):
    """Sequences at different lengths decode in one forward and stay independent."""
    for model in (SNIPPET_TEXT_MODEL, "tiny-llama"):
        prompts = [f"Count to {n}, then say a word of {n * 3} letters." * n for n in range(1, 7)]
        solo = [answer(vision_url, model, p, max_tokens=20) for p in prompts]
        with ThreadPoolExecutor(len(prompts)) as pool:
            together = list(pool.map(partial(answer, vision_url, model, max_tokens=20), prompts))
        for a, b in zip(solo, together, strict=True):
            assert a["choices"][0]["message"] == b["choices"][0]["message"]


def test_seeded_sampling_repeats(vision_url):
    one = answer(vision_url, "tiny-llama", "Hello", temperature=1.0, seed=7, max_tokens=12)
    two = answer(vision_url, "tiny-llama", "Hello", temperature=1.0, seed=7, max_tokens=12)
    other = answer(vision_url, "tiny-llama", "Hello", temperature=1.0, seed=8, max_tokens=12)
    assert one["choices"][0]["message"] == two["choices"][0]["message"]
    assert one["choices"][0]["message"] != other["choices"][0]["message"]


def test_a_long_prompt_is_prefilled_in_chunks(vision_url):
    """A prompt past --batch-tokens goes through in several forwards and still counts right."""
    text = "The quick brown fox jumps over the lazy dog. " * 40
    short = answer(vision_url, "tiny-llama", "x")["usage"]["prompt_tokens"]
    body = answer(vision_url, "tiny-llama", "x" + text)
    assert body["usage"]["prompt_tokens"] > short + 300
    assert body["usage"]["completion_tokens"] == 16


def test_smollm2_dequantised_from_its_gguf_agrees_with_llama_cpp(vision_url, base_url):
    """The same weights read by the other runner: its greedy first token is one llama.cpp also
    ranks in its top 5 (a broken dequantisation would pick from a vocabulary of 49k)."""
    question = "What is the capital of France?"
    body = answer(vision_url, SMOLLM2_TRANSFORMERS, question, max_tokens=1)
    reference = answer(base_url, "dummy", question, max_tokens=1, logprobs=True, top_logprobs=5)
    top = reference["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    assert body["choices"][0]["message"]["content"] in {t["token"] for t in top}, top
    assert body["usage"]["prompt_tokens"] == reference["usage"]["prompt_tokens"]
    assert "transformers" in body["system_fingerprint"]
    # The next turn reuses the cached prefix of the first.
    again = answer(vision_url, SMOLLM2_TRANSFORMERS, "What is the capital of France?")
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


def test_a_template_that_refuses_the_conversation_is_400(vision_url):
    """Valid for the API, refused by the model's own template (raise_exception): a 400 that
    carries the template's message."""
    alternating = [{"role": "user", "content": "Hi"}]
    r = httpx.post(
        f"{vision_url}/v1/chat/completions",
        json={"model": STRICT_MODEL, "messages": alternating, "max_tokens": 2},
        headers={"x-wait-for-model": "true"},
        timeout=300,
    )
    assert r.status_code == 200, r.text  # the model is loaded and takes a well-formed chat
    two_users = [*alternating, {"role": "user", "content": "Hello?"}]
    r = chat(vision_url, model=STRICT_MODEL, messages=two_users)
    assert r.status_code == 400, r.text
    assert r.json()["error_type"] == "validation"
    assert "roles must alternate" in r.json()["error"]
