"""Images in messages, end to end: tiny random VLMs of three styles (LLaVA, Qwen2-VL with M-RoPE,
Mllama with cross-attention) on the transformers runner, images by data URL and from a loopback
HTTP server. Random weights prove the path (image -> tokens -> model -> answer), not quality."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

from tests.conftest import (
    IMAGE_MAX_PIXELS,
    NO_END,
    SNIPPET_VISION_MODEL,
    VISION_MODELS,
    Server,
    chat,
    idle,
    sampled_tokens,
    wait_until,
)

# Prompt tokens one 64x64 image adds: LLaVA's 16 patches; Qwen2-VL's 2x2 merged patches between
# <|vision_start|> and <|vision_end|>; Mllama's single <|image|> (the rest is cross-attention).
IMAGE_TOKENS = {"llava": 16, "qwen2_vl": 6, "mllama": 1}
QUESTION = "What is in this picture?"


def png(color: str, size: tuple[int, int] = (64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def data_url(color: str) -> str:
    return "data:image/png;base64," + base64.b64encode(png(color)).decode()


def ask(image_urls: list[str], text: str = QUESTION) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in image_urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def greedy(url: str, model: str, messages: list[dict], **extra) -> dict:
    body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": 8, **extra}
    r = chat(url, **body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def images():
    """A loopback HTTP server: images, a non-image, a huge image, a redirect to `localhost`."""
    files = {
        "/red.png": png("red"),
        "/blue.png": png("blue"),
        "/green.png": png("green"),
        "/huge.png": png("white", (1100, 1000)),  # over IMAGE_MAX_PIXELS
        "/notes.txt": b"not an image at all",
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/to-localhost":
                self.send_response(302)
                self.send_header("location", f"http://localhost:{port}/red.png")
                self.end_headers()
                return
            body = files.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("content-length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(timeout=5)


def first_top(body: dict) -> list[tuple[str, float]]:
    top = body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    return [(t["token"], round(t["logprob"], 4)) for t in top]


@pytest.mark.parametrize("kind", VISION_MODELS)
def test_a_different_image_changes_the_answer(vision_url, kind):
    model = VISION_MODELS[kind]
    runs = {
        color: greedy(vision_url, model, ask([data_url(color)]), logprobs=True, top_logprobs=5)
        for color in ("red", "blue")
    }
    again = greedy(vision_url, model, ask([data_url("red")]), logprobs=True, top_logprobs=5)
    assert first_top(runs["red"]) != first_top(runs["blue"])
    assert first_top(again) == first_top(runs["red"])  # same image, same answer
    assert (
        again["choices"][0]["message"]["content"] == runs["red"]["choices"][0]["message"]["content"]
    )


@pytest.mark.parametrize("kind", VISION_MODELS)
def test_usage_counts_the_image_tokens(vision_url, kind):
    model = VISION_MODELS[kind]
    text_only = greedy(vision_url, model, ask([]))["usage"]["prompt_tokens"]
    one = greedy(vision_url, model, ask([data_url("red")]))["usage"]["prompt_tokens"]
    assert one - text_only == IMAGE_TOKENS[kind]


@pytest.mark.parametrize("kind", VISION_MODELS)
def test_several_images_in_a_message_and_across_turns(vision_url, images, kind):
    model = VISION_MODELS[kind]
    history = [
        *ask([data_url("red")], "Remember this one."),
        {"role": "assistant", "content": "I will."},
        *ask([f"{images}/blue.png", data_url("green")], "And these two?"),
    ]
    text_only = [
        {"role": m["role"], "content": [p for p in m["content"] if p["type"] == "text"]}
        if isinstance(m["content"], list)
        else m
        for m in history
    ]
    body = greedy(vision_url, model, history)
    base = greedy(vision_url, model, text_only)["usage"]["prompt_tokens"]
    assert body["usage"]["prompt_tokens"] - base == 3 * IMAGE_TOKENS[kind]
    # The images matter, wherever they are: another first image changes the answer.
    swapped = [ask([data_url("blue")], "Remember this one.")[0], *history[1:]]
    a = greedy(vision_url, model, history, logprobs=True, top_logprobs=5)
    b = greedy(vision_url, model, swapped, logprobs=True, top_logprobs=5)
    assert first_top(a) != first_top(b)


def _batch_histogram(url: str, model: str) -> tuple[float, float]:
    """chatd_batch_sequences for a model: (steps in all, steps that sampled at most 2)."""
    text = httpx.get(f"{url}/metrics").text
    label = f'model="{model}"'

    def value(pattern: str) -> float:
        m = re.search(pattern, text, re.M)
        return float(m.group(1)) if m else 0.0

    total = value(rf"^chatd_batch_sequences_count\{{{label}\}} (\S+)")
    small = value(rf'^chatd_batch_sequences_bucket\{{le="2.0",{label}\}} (\S+)')
    return total, small


@pytest.mark.parametrize("kind", ["llava", "mllama"])
def test_image_and_text_requests_are_decoded_in_one_batch(vision_url, kind):
    """Two image and two text requests at once decode together (any step with 3 or more
    sequences holds both kinds) and each gets exactly its answer alone."""
    model = VISION_MODELS[kind]
    requests = [ask([data_url("red")]), ask([data_url("blue")]), ask([]), ask([], "Hello?")]
    solo = [greedy(vision_url, model, m, max_tokens=24) for m in requests]
    before = _batch_histogram(vision_url, model)
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda m: greedy(vision_url, model, m, max_tokens=24), requests))
    after = _batch_histogram(vision_url, model)
    for alone, batched in zip(solo, together, strict=True):
        assert batched["choices"][0]["message"] == alone["choices"][0]["message"]
        assert batched["usage"]["completion_tokens"] == alone["usage"]["completion_tokens"]
    steps, small_steps = after[0] - before[0], after[1] - before[1]
    assert steps - small_steps > 0, "no step sampled more than two sequences"


def test_a_loopback_url_allowed_by_the_operator_is_fetched(vision_url, images):
    model = VISION_MODELS["llava"]
    fetched = greedy(vision_url, model, ask([f"{images}/red.png"]), logprobs=True, top_logprobs=5)
    inline = greedy(vision_url, model, ask([data_url("red")]), logprobs=True, top_logprobs=5)
    assert first_top(fetched) == first_top(inline)  # the same bytes, the same answer


def test_allow_private_images_lets_every_private_address_through(tiny_models, images):
    """--allow-private-images (rather than a host list): `localhost`, refused by the main
    vision server, is fetched."""
    srv = Server(
        "--model", f"tiny-llava={tiny_models['llava']}", "--allow-private-images",
        "--cache-url", "off", env={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    try:
        srv.wait_ready(timeout=120)
        port = images.rsplit(":", 1)[1]
        url = f"http://localhost:{port}/red.png"
        body = greedy(srv.url, "tiny-llava", ask([url]), logprobs=True, top_logprobs=5)
        inline = greedy(
            srv.url, "tiny-llava", ask([data_url("red")]), logprobs=True, top_logprobs=5
        )
        assert first_top(body) == first_top(inline)
    finally:
        srv.stop()


@pytest.mark.parametrize(
    "path, reason",
    [
        ("http://localhost:{port}/red.png", "loopback"),  # only 127.0.0.1 is allowed
        ("http://10.1.2.3/red.png", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]:{port}/red.png", "loopback"),
        ("{images}/to-localhost", "loopback"),  # a redirect is checked again
        ("file:///etc/passwd", "not an http(s) url"),
        ("{images}/notes.txt", "not an image"),
        ("{images}/huge.png", "pixel limit"),
        ("{images}/missing.png", "404"),
        ("data:text/plain;base64,aGVsbG8=", "image"),
        ("data:image/png;base64,%%%", "base64"),
    ],
)
def test_image_refusals_are_400s_naming_url_and_reason(vision_server, images, path, reason):
    vision_url = vision_server.url
    port = images.rsplit(":", 1)[1]
    url = path.format(images=images, port=port)
    r = chat(vision_url, model=VISION_MODELS["llava"], messages=ask([url]), max_tokens=4)
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"error", "error_type"}
    assert url[:30] in body["error"] and reason in body["error"].lower(), body
    if reason == "pixel limit":
        assert f"{IMAGE_MAX_PIXELS:,}" in body["error"]
    assert body["error"] in vision_server.log.read_text()  # the operator sees it too


def test_more_images_than_allowed_is_a_400(vision_url):
    r = chat(vision_url, model=VISION_MODELS["llava"], messages=ask([data_url("red")] * 17))
    assert r.status_code == 400
    assert "at most 16 images per request, got 17" in r.json()["error"]


def test_a_text_model_on_transformers_refuses_images(vision_url):
    r = chat(vision_url, model="tiny-llama", messages=ask([data_url("red")]))
    assert r.status_code == 400
    assert "does not take images" in r.json()["error"]


def _seed_image_messages(image_url: str) -> list[dict]:
    """The seed's image snippet's messages, its URL pointed at our image server."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this image in one sentence."},
                {"type": "image_url", "image_url": {"url": image_url}},
            ],
        }
    ]


def test_seed_image_snippet_with_huggingface_hub(vision_url, images, capsys):
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=f"{vision_url}/v1/", api_key="hf_***")
    messages = _seed_image_messages(f"{images}/red.png")
    stream = client.chat.completions.create(
        model="meta-llama/Llama-3.2-11B-Vision-Instruct",
        messages=messages,
        max_tokens=500,
        stream=True,
    )
    deltas = []  # beside the snippet's loop: what each chunk carried
    for chunk in stream:
        print(chunk.choices[0].delta.content, end="")
        deltas.append(chunk.choices[0].delta.content)
    printed = capsys.readouterr().out
    assert printed.strip()
    assert all(isinstance(d, str) for d in deltas)  # every delta a string, the last one too


def test_seed_image_snippet_with_openai(vision_url, images, capsys):
    from openai import OpenAI

    client = OpenAI(base_url=f"{vision_url}/v1/", api_key="hf_***")
    messages = _seed_image_messages(f"{images}/red.png")
    stream = client.chat.completions.create(
        model="meta-llama/Llama-3.2-11B-Vision-Instruct",
        messages=messages,
        max_tokens=500,
        stream=True,
    )
    for chunk in stream:
        print(chunk.choices[0].delta.content, end="")
    assert capsys.readouterr().out.strip()
    # Non-streamed, the same request names the model and counts its one image token.
    done = client.chat.completions.create(
        model=SNIPPET_VISION_MODEL, messages=messages, max_tokens=5, temperature=0
    )
    assert done.model == SNIPPET_VISION_MODEL and done.usage.completion_tokens == 5
    assert "transformers" in done.system_fingerprint


def test_a_client_leaving_mid_stream_frees_its_slot(vision_url):
    model = VISION_MODELS["mllama"]  # the default model: /info shows its sequences
    max_tokens = 400  # what the request would generate if it were not cancelled
    body = {
        "model": model, "messages": ask([data_url("red")]), "max_tokens": max_tokens,
        "stream": True, "logit_bias": NO_END,
    }  # fmt: skip
    before = sampled_tokens(vision_url, model)
    with httpx.stream("POST", f"{vision_url}/v1/chat/completions", json=body, timeout=60) as r:
        chunks = r.iter_lines()
        assert sum(1 for line in (next(chunks) for _ in range(6)) if line.startswith("data:")) >= 2
    info = httpx.get(f"{vision_url}/info").json()
    assert info["model_id"] == model and info["runner"] == "transformers"
    wait_until(lambda: idle(vision_url), 300, "the slot of the client that left to be free")
    assert sampled_tokens(vision_url, model) - before < max_tokens / 2
    # And the model still answers.
    assert greedy(vision_url, model, ask([data_url("blue")]))["choices"][0]["message"]["content"]


def test_json_schema_output_through_the_transformers_runner(vision_url):
    schema = {
        "type": "object",
        "properties": {"color": {"enum": ["red", "blue"]}, "sure": {"type": "boolean"}},
        "required": ["color", "sure"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
    for model in ("tiny-llama", VISION_MODELS["llava"]):
        body = greedy(vision_url, model, ask([]), response_format=fmt, max_tokens=40)
        value = json.loads(body["choices"][0]["message"]["content"])
        assert value["color"] in ("red", "blue") and isinstance(value["sure"], bool)


@pytest.mark.parametrize("kind", VISION_MODELS)
def test_choices_share_the_images_and_each_gets_the_answer(vision_url, kind):
    """n choices share one processed copy of the images (and Mllama's projected K/V)."""
    model = VISION_MODELS[kind]
    one = greedy(vision_url, model, ask([data_url("blue")]), max_tokens=12)
    three = greedy(vision_url, model, ask([data_url("blue")]), max_tokens=12, n=3)
    assert [c["message"] for c in three["choices"]] == [one["choices"][0]["message"]] * 3
    assert three["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]
