"""Text models on the transformers runner: the seed's Gemma-2 (a tiny random one, sliding-window
layers included), a tiny llama, and SmolLM2 dequantised from its GGUF for a real-text check."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

from tests.conftest import SMOLLM2_TRANSFORMERS, SNIPPET_TEXT_MODEL, chat


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


def test_smollm2_dequantised_from_its_gguf_answers_in_words(vision_url):
    body = answer(vision_url, SMOLLM2_TRANSFORMERS, "What is the capital of France?", max_tokens=20)
    assert "Paris" in body["choices"][0]["message"]["content"]
    assert "transformers" in body["system_fingerprint"]
    # The next turn reuses the cached prefix of the first.
    again = answer(vision_url, SMOLLM2_TRANSFORMERS, "What is the capital of France?")
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
