"""The transformers runner against transformers itself, in-process on the tiny models.

Whatever the batching (sequences at different lengths in one forward, prompts in chunks and
packed together, image and text rows side by side), each sequence gets the logits of a plain
forward over its whole prompt and the greedy tokens of `generate`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from chatd.chat.template import ChatTemplate
from chatd.engine.runners.base import BatchItem
from chatd.engine.runners.transformers import TransformersRunner

STEPS = 10


@pytest.fixture(scope="module")
def runner_for(tiny_models):
    loaded: dict[str, TransformersRunner] = {}

    def get(kind: str) -> TransformersRunner:
        if kind not in loaded:
            loaded[kind] = TransformersRunner(tiny_models[kind], n_slots=4, n_ctx=256)
        return loaded[kind]

    yield get
    for runner in loaded.values():
        runner.close()


def render(runner: TransformersRunner, content) -> str:
    tok = runner.tokenizer
    template = ChatTemplate(tok.chat_template, tok.bos_token, tok.eos_token)
    return template.render([{"role": "user", "content": content}])


def decode_together(runner, prompts: dict[int, tuple[list[int], object]], chunk: int):
    """Prefill every prompt in chunks (all slots' chunks in each forward call), then decode
    greedily, all slots in each call. Returns each slot's first logits and tokens."""
    first: dict[int, np.ndarray] = {}
    done = dict.fromkeys(prompts, 0)
    while any(done[s] < len(p) for s, (p, _) in prompts.items()):
        items = []
        for slot, (prompt, images) in prompts.items():
            start = done[slot]
            if start < len(prompt):
                end = min(len(prompt), start + chunk)
                items.append(BatchItem(slot, prompt[start:end], start, end == len(prompt), images))
                done[slot] = end
        logits = runner.forward(items)
        wanted = [item.slot for item in items if item.want_logits]
        first.update({slot: row.copy() for slot, row in zip(wanted, logits, strict=True)})
    tokens = {slot: [int(np.argmax(row))] for slot, row in first.items()}
    for _ in range(STEPS - 1):
        items = [
            BatchItem(slot, [tokens[slot][-1]], len(p) + len(tokens[slot]) - 1, True, images)
            for slot, (p, images) in prompts.items()
        ]
        for item, row in zip(items, runner.forward(items), strict=True):
            tokens[item.slot].append(int(np.argmax(row)))
    return first, tokens


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_text_sequences_batched_and_chunked_match_generate(runner_for, kind):
    runner = runner_for(kind)
    texts = ["Hi", "Tell me a story about a dragon and a knight.", "Why? " * 12]
    prompts = {
        slot: (runner.tokenizer.encode(render(runner, text)), None)
        for slot, text in enumerate(texts)
    }
    first, tokens = decode_together(runner, prompts, chunk=5)
    with torch.inference_mode():
        for slot, (prompt, _) in prompts.items():
            ids = torch.tensor([prompt])
            reference = runner.model(input_ids=ids).logits[0, -1].numpy()
            np.testing.assert_allclose(first[slot], reference, atol=1e-4)
            out = runner.model.generate(ids, max_new_tokens=STEPS, do_sample=False)
            assert tokens[slot] == out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl", "mllama"])
def test_image_and_text_rows_together_match_transformers(runner_for, kind):
    runner = runner_for(kind)
    with_image = render(runner, [{"type": "image"}, {"type": "text", "text": "What is it?"}])
    red, blue = (Image.new("RGB", (64, 64), c) for c in ("red", "blue"))
    prompts = {
        0: runner.encode_images(with_image, [red]),
        1: runner.encode_images(with_image, [blue]),
        3: (runner.tokenizer.encode(render(runner, "What is it?")), None),
    }
    first, tokens = decode_together(runner, prompts, chunk=3)
    assert not np.allclose(first[0], first[1])  # the image matters
    with torch.inference_mode():
        for slot, image in ((0, red), (1, blue)):
            inputs = runner.processor(
                text=[with_image], images=[[image]], return_tensors="pt", add_special_tokens=False
            )
            assert inputs["input_ids"][0].tolist() == prompts[slot][0]
            reference = runner.model(**inputs).logits[0, -1].numpy()
            np.testing.assert_allclose(first[slot], reference, atol=1e-4)
            out = runner.model.generate(**inputs, max_new_tokens=STEPS, do_sample=False)
            assert tokens[slot] == out[0, len(prompts[slot][0]) :].tolist()
            if kind == "mllama":  # projected once, then read back: no vision states kept
                vision = prompts[slot][1]
                assert vision.states is None and len(vision.cross_kv) > 0
        ids = torch.tensor([prompts[3][0]])
        out = runner.model.generate(input_ids=ids, max_new_tokens=STEPS, do_sample=False)
        assert tokens[3] == out[0, ids.shape[1] :].tolist()
