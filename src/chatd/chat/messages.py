"""Request messages -> the plain dicts a chat template expects."""

from __future__ import annotations

import json
from typing import Any

from chatd.server.protocol import ImagePart, Message


class UnsupportedContent(ValueError):
    pass


def template_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Text models see each message's text; templates know no `developer` role, so it is system."""
    out = []
    for i, m in enumerate(messages):
        msg: dict[str, Any] = {
            "role": "system" if m.role == "developer" else m.role,
            "content": _text(m.content, i),
        }
        if m.name:
            msg["name"] = m.name
        if m.tool_calls:
            msg["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": _args(c.function.arguments)},
                }
                for c in m.tool_calls
            ]
        if m.tool_call_id:
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out


def _text(content, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if any(isinstance(p, ImagePart) for p in content):
        raise UnsupportedContent(
            f"messages.{index}.content: this model does not take images (image_url parts)"
        )
    return "\n".join(p.text for p in content)


def _args(arguments) -> Any:
    """Templates expect tool-call arguments as an object; the wire carries a JSON string."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments or {}
