"""A conversation -> the prompt tokens the model continues."""

from __future__ import annotations

from chatd.chat.messages import template_messages
from chatd.chat.template import ChatTemplate
from chatd.engine.runners.base import Tokenizer
from chatd.server.protocol import Message


def build_prompt(
    messages: list[Message], template: ChatTemplate, tokenizer: Tokenizer
) -> list[int]:
    """Raises UnsupportedContent or TemplateRenderError (both ValueError) for a bad conversation."""
    text = template.render(template_messages(messages))
    return tokenizer.encode(text)
