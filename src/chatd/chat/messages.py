"""Request messages -> the plain dicts a chat template expects."""

from __future__ import annotations

import json
from typing import Any

from chatd.chat.errors import RequestError
from chatd.protocol.request import ImagePart, Message


class UnsupportedContent(RequestError):
    pass


def template_messages(
    messages: list[Message], vision: bool = False
) -> tuple[list[dict[str, Any]], list[str]]:
    """The turns a chat template renders, and the image URLs in the order they appear.

    Text models see each message's text. A vision model's template gets content parts, an
    image as `{"type": "image"}` where it stands (its processor puts the image tokens there).
    Templates know no `developer` role, so it is system."""
    out, images = [], []
    for i, m in enumerate(messages):
        msg: dict[str, Any] = {
            "role": "system" if m.role == "developer" else m.role,
            "content": _parts(m.content, images) if vision else _text(m.content, i),
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
    return out, images


def _text(content, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if any(isinstance(p, ImagePart) for p in content):
        raise UnsupportedContent(
            f"messages.{index}.content: this model does not take images (image_url parts)"
        )
    return "\n".join(p.text for p in content)


def _parts(content, images: list[str]) -> str | list[dict[str, str]]:
    if content is None or isinstance(content, str):
        return content or ""
    parts: list[dict[str, str]] = []
    for p in content:
        if isinstance(p, ImagePart):
            images.append(p.image_url.url)
            parts.append({"type": "image"})
        else:
            parts.append({"type": "text", "text": p.text})
    return parts


def _args(arguments) -> Any:
    """Templates expect tool-call arguments as an object; the wire carries a JSON string."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments or {}
