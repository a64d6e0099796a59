"""A conversation (and its tools) -> the prompt tokens the model continues, with its images."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from chatd.chat.errors import RequestError
from chatd.chat.images import ImageError, fetch_images
from chatd.chat.messages import template_messages
from chatd.chat.template import ChatTemplate
from chatd.chat.tools import ToolPlan, with_tool_prompt
from chatd.config import ImageLimits
from chatd.engine.runners.base import Runner
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
    text = template.render(turns, tools=tools.tools if tools and tools.native else None)
    if not urls:
        return Prompt(runner.tokenizer.encode(text))
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
