"""A conversation (and its tools) -> the prompt tokens the model continues."""

from __future__ import annotations

from chatd.chat.messages import template_messages
from chatd.chat.template import ChatTemplate
from chatd.chat.tools import ToolPlan, with_tool_prompt
from chatd.engine.runners.base import Tokenizer
from chatd.server.protocol import Message


def build_prompt(
    messages: list[Message], template: ChatTemplate, tokenizer: Tokenizer, tools: ToolPlan | None
) -> list[int]:
    """Raises UnsupportedContent or TemplateRenderError (both ValueError) for a bad conversation."""
    turns = template_messages(messages)
    if tools and not tools.native:
        turns = with_tool_prompt(turns, tools)
    text = template.render(turns, tools=tools.tools if tools and tools.native else None)
    return tokenizer.encode(text)
