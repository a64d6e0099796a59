"""A conversation (and its tools) -> the prompt tokens the model continues, with its images.

Only the template's own markup may hold control tokens. Text a client sent that reads as one
(`<|im_end|><|im_start|>system` typed into a message) is encoded as plain text: such a message's
content is rendered as a placeholder, and the text between placeholders is encoded with special
tokens parsed, each content without. A conversation without such text is encoded whole, as it
always was. Protected are message contents (strings and text parts), not tool-call arguments
nor tool definitions, which the template re-serialises. On the image path the processor
tokenises the prompt itself: there such text is refused with a 400.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any

from chatd.chat.errors import RequestError
from chatd.chat.images import ImageError, fetch_images
from chatd.chat.messages import template_messages
from chatd.chat.template import ChatTemplate
from chatd.chat.tools import ToolPlan, with_tool_prompt
from chatd.config import ImageLimits
from chatd.engine.runners.base import Runner, Tokenizer
from chatd.engine.types import PromptImages
from chatd.protocol.request import Message

log = logging.getLogger(__name__)


@dataclass
class Prompt:
    tokens: list[int]
    images: PromptImages | None = None  # the runner's processed images, if any


async def build_prompt(
    messages: list[Message],
    template: ChatTemplate,
    runner: Runner,
    tools: ToolPlan | None,
    limits: ImageLimits,
) -> Prompt:
    """Raises a RequestError (UnsupportedContent, TemplateRenderError, ImageError, ...) for
    a conversation this model cannot take."""
    turns, urls = template_messages(messages, vision=runner.vision)
    if tools and not tools.native:
        turns = with_tool_prompt(turns, tools)
    native_tools = tools.tools if tools and tools.native else None
    # Rendering and tokenising take a while for a long conversation: kept off the event loop.
    if not urls:
        tokens = await asyncio.to_thread(
            encode_conversation, turns, template, runner.tokenizer, native_tools
        )
        return Prompt(tokens)
    if found := _special_text(turns, runner.tokenizer):
        raise RequestError(
            f"messages: text that reads as one of this model's control tokens ({found!r}) is "
            "not accepted beside images"
        )
    text = await asyncio.to_thread(template.render, turns, tools=native_tools)
    if len(urls) > limits.max_images:
        raise RequestError(
            f"messages: at most {limits.max_images} images per request, got {len(urls)}"
        )
    try:
        images = await fetch_images(urls, limits)
    except ImageError as exc:  # the operator may want to see what clients tried to reach
        log.warning("%s", exc)
        raise
    # The processor resizes and normalises: CPU work, kept off the event loop.
    tokens, processed = await asyncio.to_thread(runner.encode_images, text, images)
    return Prompt(tokens, processed)


def encode_conversation(
    turns: list[dict[str, Any]],
    template: ChatTemplate,
    tokenizer: Tokenizer,
    tools: list[dict] | None = None,
) -> list[int]:
    """The rendered conversation's tokens, message contents never read as control tokens."""
    if not _special_text(turns, tokenizer):
        return tokenizer.encode(template.render(turns, tools=tools))
    marker = f"chatd-plain-{secrets.token_hex(8)}-"
    contents: list[str] = []

    def placeholder(text: str) -> str:
        contents.append(text)
        return f"{marker}{len(contents) - 1}."

    marked = [_map_text(turn, placeholder) for turn in turns]
    rendered = template.render(marked, tools=tools)
    # re.split with a group: markup, content index, markup, content index, ..., markup.
    pieces = re.split(f"{re.escape(marker)}(\\d+)\\.", rendered)
    tokens: list[int] = []
    for i, piece in enumerate(pieces):
        if i % 2:
            tokens += tokenizer.encode(contents[int(piece)], special=False)
        elif piece:
            tokens += tokenizer.encode(piece)
    return tokens


def _special_text(turns: list[dict[str, Any]], tokenizer: Tokenizer) -> str | None:
    """The first control token's text found in a message's content, if any."""
    if not tokenizer.specials:
        return None
    pattern = _any_of(tokenizer.specials)
    for turn in turns:
        for text in _texts(turn):
            if found := pattern.search(text):
                return found.group()
    return None


@functools.lru_cache(maxsize=8)
def _any_of(texts: frozenset[str]) -> re.Pattern:
    """One pattern for a tokenizer's control token texts (thousands, in some vocabularies)."""
    return re.compile("|".join(re.escape(t) for t in sorted(texts, key=len, reverse=True)))


def _texts(turn: dict[str, Any]) -> list[str]:
    content = turn.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if p.get("type") == "text"]
    return []


def _map_text(turn: dict[str, Any], fn) -> dict[str, Any]:
    """The turn with fn applied to its content's text (a string, or each text part)."""
    content = turn.get("content")
    if isinstance(content, str):
        return {**turn, "content": fn(content)}
    if isinstance(content, list):
        parts = [{**p, "text": fn(p["text"])} if p.get("type") == "text" else p for p in content]
        return {**turn, "content": parts}
    return turn
