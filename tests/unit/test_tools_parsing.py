import json

from chatd.chat.tools import ToolCallStream, parse_tool_calls


def names(calls):
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def test_native_blocks_give_one_call_each():
    text = (
        '<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
        '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>'
    )
    content, calls = parse_tool_calls(text)
    assert content is None
    assert names(calls) == [("a", {"x": 1}), ("b", {})]
    assert len({c["id"] for c in calls}) == 2


def test_text_around_a_native_call_stays_content():
    content, calls = parse_tool_calls(
        'Let me look. <tool_call>{"name": "a", "arguments": {}}</tool_call>'
    )
    assert content == "Let me look." and names(calls) == [("a", {})]


def test_bare_object_list_and_fence_and_parameters_key():
    assert names(parse_tool_calls('{"name": "a", "arguments": {"k": "v"}}')[1]) == [
        ("a", {"k": "v"})
    ]
    assert names(parse_tool_calls('[{"name": "a", "parameters": {}}, {"name": "b"}]')[1]) == [
        ("a", {}),
        ("b", {}),
    ]
    fenced = 'Sure:\n```json\n{"name": "a", "arguments": "{\\"k\\": 2}"}\n```'
    content, calls = parse_tool_calls(fenced)
    assert content == "Sure:" and names(calls) == [("a", {"k": 2})]


def test_plain_text_and_json_that_is_no_call_are_content():
    for text in ("Hello there.", '{"city": "Paris"}', "<tool_call>not json</tool_call>"):
        assert parse_tool_calls(text) == (text, [])


def test_stream_passes_text_at_once_and_holds_a_call():
    plain = ToolCallStream(forced=False)
    assert plain.feed(" ") == ""
    assert plain.feed("Hello") == " Hello"
    assert plain.feed(" you") == " you"
    assert plain.finish() == ("", [])
    call = ToolCallStream(forced=False)
    assert call.feed("<tool") == "" and call.feed('_call>{"name": "a", "arguments": {}}') == ""
    content, calls = call.finish()
    assert content == "" and names(calls) == [("a", {})]


def test_forced_stream_holds_everything():
    forced = ToolCallStream(forced=True)
    assert forced.feed("Hello") == ""
    assert forced.finish() == ("Hello", [])


def test_a_fenced_call_may_hold_fences_in_its_strings():
    """Markdown in an argument: a fence inside a JSON string does not close the block."""
    code = "```py\nprint(1)\n```"
    text = f'Here:\n```json\n{{"name": "run", "arguments": {{"code": {json.dumps(code)}}}}}\n```'
    content, calls = parse_tool_calls(text)
    assert content == "Here:" and names(calls) == [("run", {"code": code})]


def test_a_stream_starting_with_a_bracket_is_plain_text():
    """The stream holds back exactly what the lazy grammar triggers on: '[' is not one."""
    stream = ToolCallStream(forced=False)
    assert stream.feed("[1] is a list") == "[1] is a list"
