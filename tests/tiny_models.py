"""Tiny, randomly initialised Hugging Face model folders for tests.

`build(kind, dest)` writes a complete folder (config, float32 safetensors, tokenizer with a chat
template and, for the vision-language kinds, the processor's configuration) that loads offline with
`AutoModelForCausalLM` + `AutoTokenizer` (text kinds) or `AutoModelForImageTextToText` +
`AutoProcessor` (vision kinds). Every kind reuses SmolLM2's tokenizer from the packaged GGUF with
the special tokens its architecture needs added, and ends its turns with an eos token. The weights
are random (seeded) and small, so builds are deterministic and outputs are gibberish.

`smollm2_dequantised(dest)` writes the packaged SmolLM2-135M-Instruct GGUF out as a float32 Hugging
Face folder: a real model, about 540 MB.

`python -m tests.tiny_models` builds every kind into a temporary folder and checks each one.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from PIL import Image
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    CLIPVisionConfig,
    Gemma2Config,
    Gemma2ForCausalLM,
    GenerationConfig,
    GgufConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaProcessor,
    MllamaTextConfig,
    MllamaVisionConfig,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLTextConfig,
    Qwen2VLVisionConfig,
)

# The PIL image processors: the default ones need torchvision. Each saves under the plain class
# name, so AutoProcessor picks whichever backend is installed.
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from chatd.models.sources import packaged_models

KINDS = ("llama", "gemma2", "llava", "qwen2_vl", "mllama")

# A message's content, a string or a list of parts; an image part becomes IMAGE, which each kind
# replaces with its own placeholder.
_CONTENT = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- elif content is iterable -%}{%- for part in content -%}"
    "{%- if part.type == 'text' -%}{{ part.text }}"
    "{%- elif part.type in ['image', 'image_url'] -%}IMAGE"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)
CHATML = _CONTENT + (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message.role + '\\n' + render(message.content) + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
# Gemma's turns, with a system message put at the top of the first user turn.
GEMMA = _CONTENT + (
    "{{ bos_token }}"
    "{%- set system = render(messages[0].content) + '\\n\\n'"
    " if messages[0].role == 'system' else '' -%}"
    "{%- for message in messages if message.role != 'system' -%}"
    "{{ '<start_of_turn>' + ('model' if message.role == 'assistant' else message.role) + '\\n' }}"
    "{{ (system if loop.first else '') + render(message.content) | trim + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

# Every kind's language model: 4 heads of 16, so Qwen2-VL's M-RoPE sections are [2, 3, 3].
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}


@functools.cache
def _smollm2_tokenizer():
    gguf = packaged_models()[0].path
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _tokenizer(added: list[str], template: str, image: str = "", **special: str):
    """SmolLM2's tokenizer plus the `added` special tokens, eos <|im_end|> and pad <|endoftext|>
    unless `special` says otherwise, and `template` (IMAGE replaced by `image`) to chat with."""
    tokenizer = copy.deepcopy(_smollm2_tokenizer())
    tokenizer.add_tokens(added, special_tokens=True)
    special = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"} | special
    for name, token in special.items():
        setattr(tokenizer, name, token)
    tokenizer.chat_template = template.replace("IMAGE", image)
    return tokenizer


def _ids(tokenizer) -> dict[str, int]:
    """The vocabulary size and special token ids a language model's config takes."""
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _save(dest: Path, model, tokenizer, processor=None) -> Path:
    """Write the model, stopping generation at the tokenizer's eos, the tokenizer and the
    processor (or its image processor)."""
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    if processor is not None:
        processor.save_pretrained(dest)
    return dest


def _llama(dest: Path) -> Path:
    tokenizer = _tokenizer([], CHATML)
    config = LlamaConfig(
        **TEXT,
        num_hidden_layers=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        **_ids(tokenizer),
    )
    return _save(dest, LlamaForCausalLM(config), tokenizer)


def _gemma2(dest: Path) -> Path:
    tokenizer = _tokenizer(
        ["<bos>", "<start_of_turn>", "<end_of_turn>"],
        GEMMA,
        bos_token="<bos>",
        eos_token="<end_of_turn>",
    )
    # One sliding-window layer (window 32) then one global one; Gemma 2's softcapping as it is.
    config = Gemma2Config(
        **TEXT,
        num_hidden_layers=2,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=32,
        **_ids(tokenizer),
    )
    return _save(dest, Gemma2ForCausalLM(config), tokenizer)


def _llava(dest: Path) -> Path:
    tokenizer = _tokenizer(["<image>"], CHATML, image="<image>")
    # 32-pixel images in 8-pixel patches: 16 image tokens (CLIP's class token dropped).
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    text = LlamaConfig(**TEXT, num_hidden_layers=2, num_key_value_heads=2, **_ids(tokenizer))
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=16,
        tie_word_embeddings=True,
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,
    )
    return _save(dest, LlavaForConditionalGeneration(config), tokenizer, processor)


def _qwen2_vl(dest: Path) -> Path:
    tokens = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer = _tokenizer(tokens, CHATML, image="<|vision_start|><|image_pad|><|vision_end|>")
    start, end, image, video = tokenizer.convert_tokens_to_ids(tokens)
    text = Qwen2VLTextConfig(
        **TEXT,
        num_hidden_layers=2,
        num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3]},
        **_ids(tokenizer),
    )
    vision = Qwen2VLVisionConfig(
        depth=2, embed_dim=32, num_heads=4, mlp_ratio=2, hidden_size=TEXT["hidden_size"]
    )
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=image,
        video_token_id=video,
        vision_start_token_id=start,
        vision_end_token_id=end,
        tie_word_embeddings=True,
    )
    # Qwen2VLProcessor can't be made without a video processor, which needs torchvision: the
    # folder holds its parts, as Qwen's own repositories do, for AutoProcessor to assemble.
    # Images are resized to 2x2 to 4x4 units of 28 pixels (14-pixel patches merged 2x2), each
    # unit one image token: 4 to 16 tokens.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    return _save(dest, Qwen2VLForConditionalGeneration(config), tokenizer, image_processor)


def _mllama(dest: Path) -> Path:
    tokenizer = _tokenizer(["<|image|>"], CHATML, image="<|image|>")
    # Up to 4 tiles of 32 pixels, in 8-pixel patches; the text sees them through layer 1.
    vision = MllamaVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_global_layers=1,
        attention_heads=4,
        intermediate_layers_indices=[1],
        vision_output_dim=64,
        image_size=32,
        patch_size=8,
        max_num_tiles=4,
    )
    # Half width: the output head can't share the embeddings, which have 8 more rows.
    text = MllamaTextConfig(
        **(TEXT | {"hidden_size": 32}),
        num_hidden_layers=3,
        num_key_value_heads=2,
        cross_attention_layers=[1],
        **_ids(tokenizer),
    )
    config = MllamaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"),
    )
    model = MllamaForConditionalGeneration(config)
    # The gates start at zero, which would shut the image out: open them.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gate"):
                param.fill_(1.0)
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessorPil(
            size={"height": 32, "width": 32}, max_image_tiles=4
        ),
        tokenizer=tokenizer,
    )
    return _save(dest, model, tokenizer, processor)


def build(kind: str, dest: Path) -> Path:
    """Write a tiny random model of `kind` (one of KINDS) into `dest`; return `dest`."""
    torch.manual_seed(0)
    builders = {
        "llama": _llama,
        "gemma2": _gemma2,
        "llava": _llava,
        "qwen2_vl": _qwen2_vl,
        "mllama": _mllama,
    }
    return builders[kind](Path(dest))


def smollm2_dequantised(dest: Path) -> Path:
    """Write the packaged SmolLM2-135M-Instruct GGUF out as a float32 Hugging Face folder."""
    gguf = packaged_models()[0].path
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    model.save_pretrained(dest)
    _smollm2_tokenizer().save_pretrained(dest)
    return Path(dest)


@torch.inference_mode()
def _check(kind: str, dest: Path) -> str:
    """Load `dest` as a server would and run it; a vision model must tell a red image from a
    blue one. Returns what the processor gave, for the vision kinds."""
    if kind in ("llama", "gemma2"):
        tokenizer = AutoTokenizer.from_pretrained(dest)
        model = AutoModelForCausalLM.from_pretrained(dest)
        messages = [{"role": "user", "content": "Hi"}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        model(**tokenizer(text, return_tensors="pt", add_special_tokens=False))
        return ""
    processor = AutoProcessor.from_pretrained(dest)
    model = AutoModelForImageTextToText.from_pretrained(dest)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    logits = []
    for colour in ("red", "blue"):
        image = Image.new("RGB", (64, 64), colour)
        inputs = processor(text=[text], images=[[image]], return_tensors="pt")
        logits.append(model(**inputs).logits[0, -1])
    if torch.equal(*logits):
        raise AssertionError("the image makes no difference")
    return ", ".join(f"{key} {tuple(value.shape)}" for key, value in inputs.items())


if __name__ == "__main__":
    import tempfile
    import time

    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            start = time.perf_counter()
            dest = build(kind, Path(tmp) / kind)
            seconds = time.perf_counter() - start
            size = sum(f.stat().st_size for f in dest.iterdir()) / 1e6
            try:
                result = f"pass  {_check(kind, dest)}".rstrip()
            except ImportError as error:  # Qwen2-VL's processor without torchvision
                result = f"skip  {str(error).strip().split('. ')[0]}"
            except Exception as error:
                failed, result = True, f"FAIL  {error!r}"
            print(f"{kind:9} {size:5.1f} MB {seconds:4.1f} s  {result}", flush=True)
    raise SystemExit(failed)
