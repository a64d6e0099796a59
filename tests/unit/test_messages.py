"""chat/messages.py: request messages -> the dicts a chat template renders, and the images."""

from __future__ import annotations

import pydantic
import pytest

from chatd.chat.messages import UnsupportedContent, template_messages
from chatd.protocol.request import Message

PNG_URL = "data:image/png;base64,AAAA"
PARIS = '{"city": "Paris"}'


def turns(*messages: dict, vision: bool = False) -> tuple[list[dict], list[str]]:
    return template_messages([Message.model_validate(m) for m in messages], vision=vision)


def test_plain_text_turns_keep_their_roles_and_text():
    out, images = turns(
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    )
    assert out == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    assert images == []


def test_developer_is_system_and_missing_content_is_empty():
    out, _ = turns({"role": "developer", "content": "Rules."}, {"role": "assistant"})
    assert out == [{"role": "system", "content": "Rules."}, {"role": "assistant", "content": ""}]


def test_text_parts_are_joined_by_newlines_for_a_text_model():
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    out, _ = turns({"role": "user", "content": parts})
    assert out == [{"role": "user", "content": "one\ntwo"}]


def test_an_image_for_a_text_model_is_refused_naming_the_message():
    image = {"type": "image_url", "image_url": {"url": PNG_URL}}
    with pytest.raises(UnsupportedContent, match=r"messages\.1\.content.*does not take images"):
        turns({"role": "user", "content": "Hi"}, {"role": "user", "content": [image]})


def test_a_vision_model_gets_parts_with_images_where_they_stand():
    content = [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": PNG_URL}},
        {"type": "image_url", "image_url": {"url": "https://example.test/b.png"}},
    ]
    out, images = turns(
        {"role": "user", "content": content},
        {"role": "assistant", "content": "Done"},
        vision=True,
    )
    assert out[0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image"},
        {"type": "image"},
    ]
    assert out[1] == {"role": "assistant", "content": "Done"}  # plain text stays a string
    assert images == [PNG_URL, "https://example.test/b.png"]  # in the order they appear


def test_tool_calls_get_their_arguments_as_objects_and_tool_results_their_id():
    out, _ = turns(
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "call_1", "function": {"name": "get_weather", "arguments": PARIS}},
                {"id": "call_2", "function": {"name": "get_time", "arguments": "not json"}},
                {"id": "call_3", "function": {"name": "now"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "sunny"},
    )  # fmt: skip
    calls = out[1]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Paris"}, "not json", {}]
    assert all(c["type"] == "function" for c in calls)
    assert [c["id"] for c in calls] == ["call_1", "call_2", "call_3"]
    assert out[1]["content"] == ""
    assert out[2] == {
        "role": "tool", "content": "sunny", "name": "get_weather", "tool_call_id": "call_1",
    }  # fmt: skip


def test_unknown_content_parts_and_roles_are_refused_by_the_request_model():
    with pytest.raises(pydantic.ValidationError):
        Message.model_validate({"role": "user", "content": [{"type": "audio", "data": "x"}]})
    with pytest.raises(pydantic.ValidationError):
        Message.model_validate({"role": "robot", "content": "beep"})
