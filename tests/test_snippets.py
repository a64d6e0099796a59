"""The seed's client snippets, as written apart from pointing at our URL."""

from __future__ import annotations

import huggingface_hub
import openai
import pytest

from chatd.models.sources import SMOLLM2_ID
from tests.conftest import SNIPPET_TEXT_MODEL

TEXT_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
IMAGE_MESSAGES = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Describe this image in one sentence."},
            {
                "type": "image_url",
                "image_url": {
                    "url": "https://cdn.britannica.com/61/93061-050-99147DCE/Statue-of-Liberty-Island-New-York-Bay.jpg"
                },
            },
        ],
    }
]


def test_hf_text_snippet_streams_an_answer(base_url, capsys):
    client = huggingface_hub.InferenceClient(base_url=f"{base_url}/v1/", api_key="hf_***")
    messages = TEXT_MESSAGES
    stream = client.chat.completions.create(
        model=SNIPPET_TEXT_MODEL, messages=messages, max_tokens=500, stream=True
    )
    deltas = []  # beside the snippet's loop: what each chunk carried
    for chunk in stream:
        print(chunk.choices[0].delta.content, end="")
        deltas.append(chunk.choices[0].delta.content)
    printed = capsys.readouterr().out
    assert printed.strip()
    assert all(isinstance(d, str) for d in deltas)  # every delta a string, the last one too


def test_openai_text_snippet_streams_an_answer(base_url, capsys):
    client = openai.OpenAI(base_url=f"{base_url}/v1/", api_key="hf_***")
    messages = TEXT_MESSAGES
    stream = client.chat.completions.create(
        model=SNIPPET_TEXT_MODEL, messages=messages, max_tokens=500, stream=True
    )
    deltas = []  # beside the snippet's loop: what each chunk carried
    for chunk in stream:
        print(chunk.choices[0].delta.content, end="")
        deltas.append(chunk.choices[0].delta.content)
    printed = capsys.readouterr().out
    assert printed.strip()
    assert all(isinstance(d, str) for d in deltas)


def test_image_snippets_get_a_clear_400_from_a_text_model(base_url):
    """The seed's image snippet, sent to a text model (its own vision model: test_vision.py)."""
    hf = huggingface_hub.InferenceClient(base_url=f"{base_url}/v1/", api_key="hf_***")
    with pytest.raises(huggingface_hub.errors.BadRequestError, match="does not take images"):
        for _ in hf.chat.completions.create(
            model=SMOLLM2_ID, messages=IMAGE_MESSAGES, max_tokens=500, stream=True
        ):
            pass
    oa = openai.OpenAI(base_url=f"{base_url}/v1/", api_key="hf_***")
    with pytest.raises(openai.BadRequestError) as raised:
        oa.chat.completions.create(
            model=SMOLLM2_ID, messages=IMAGE_MESSAGES, max_tokens=500, stream=True
        )
    # OpenAI keeps an HF error's message (a string under "error") as the exception's body.
    assert "does not take images" in raised.value.body
