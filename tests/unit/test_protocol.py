import pytest
from pydantic import ValidationError

from chatd.protocol.request import ChatRequest

MESSAGES = [{"role": "user", "content": "hi"}]


def _req(**fields):
    return ChatRequest.model_validate({"messages": MESSAGES, **fields})


def test_stop_string_becomes_one_item_list():
    assert _req(stop="###").stop == ["###"]


def test_stop_list_stays_a_list():
    assert _req(stop=["a", "b"]).stop == ["a", "b"]


def test_absent_stop_is_empty_list():
    assert _req().stop == []


def test_four_stops_are_accepted_and_five_fail():
    assert len(_req(stop=["a", "b", "c", "d"]).stop) == 4
    with pytest.raises(ValidationError, match="at most 4 stop"):
        _req(stop=["a", "b", "c", "d", "e"])


def test_explicit_nulls_for_every_optional_field_are_accepted():
    optional = [name for name, f in ChatRequest.model_fields.items() if not f.is_required()]
    assert len(optional) >= 20
    req = _req(**dict.fromkeys(optional))
    assert req.stop == []
    assert req.output_limit is None
    assert req.bias_map(10) == {}
    assert req.model_extra == {}


def test_explicit_nulls_inside_messages_are_accepted():
    req = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "user", "content": None, "name": None, "tool_calls": None},
                {"role": "tool", "content": "x", "tool_call_id": None},
            ],
            "stream_options": {"include_usage": None},
        }
    )
    assert req.messages[0].content is None


def test_unknown_fields_are_accepted_and_kept_aside():
    req = _req(user="u-1", parallel_tool_calls=True, store=None)
    assert req.model_extra == {"user": "u-1", "parallel_tool_calls": True, "store": None}


def test_unknown_fields_in_nested_objects_are_ignored():
    req = ChatRequest.model_validate(
        {"messages": [{"role": "user", "content": "hi", "refusal": None, "audio": {}}]}
    )
    assert req.messages[0].content == "hi"


def test_max_completion_tokens_wins_over_max_tokens():
    assert _req(max_tokens=10, max_completion_tokens=20).output_limit == 20
    assert _req(max_tokens=10).output_limit == 10
    assert _req(max_completion_tokens=7).output_limit == 7
    assert _req().output_limit is None


def test_max_tokens_zero_fails():
    with pytest.raises(ValidationError):
        _req(max_tokens=0)


def test_logit_bias_list_is_dense_per_token_id():
    assert _req(logit_bias=[0.0, 1.5, 0.0, -2.0]).bias_map(10) == {1: 1.5, 3: -2.0}


def test_logit_bias_object_with_string_keys_maps_to_ids():
    assert _req(logit_bias={"42": 3}).bias_map(100) == {42: 3.0}


def test_logit_bias_is_clamped_to_plus_minus_100():
    assert _req(logit_bias={"1": 500, "2": -500}).bias_map(10) == {1: 100.0, 2: -100.0}


@pytest.mark.parametrize(
    "bias",
    [{"100": 1}, {"-1": 1}, [0.0] * 100 + [1.0]],
    ids=["object-past-end", "object-negative", "list-past-end"],
)
def test_logit_bias_id_out_of_range_raises(bias):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        _req(logit_bias=bias).bias_map(100)


def test_top_logprobs_without_logprobs_fails():
    with pytest.raises(ValidationError, match="requires logprobs"):
        _req(top_logprobs=3)
    with pytest.raises(ValidationError, match="requires logprobs"):
        _req(top_logprobs=3, logprobs=False)


def test_top_logprobs_with_logprobs_is_accepted():
    assert _req(logprobs=True, top_logprobs=20).top_logprobs == 20


def test_top_logprobs_above_20_fails():
    with pytest.raises(ValidationError):
        _req(logprobs=True, top_logprobs=21)


def test_message_content_as_string_parts_and_null_all_parse():
    req = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                    ],
                },
                {"role": "assistant", "content": None},
            ]
        }
    )
    parts = req.messages[1].content
    assert [p.type for p in parts] == ["text", "image_url"]
    assert parts[0].text == "what is this?"
    assert parts[1].image_url.url == "data:image/png;base64,AA"
    assert req.messages[2].content is None


def test_unknown_content_part_type_fails():
    with pytest.raises(ValidationError):
        _req(messages=[{"role": "user", "content": [{"type": "video", "video": "x"}]}])


@pytest.mark.parametrize("role", ["system", "developer", "user", "assistant", "tool"])
def test_known_roles_parse(role):
    req = ChatRequest.model_validate({"messages": [{"role": role, "content": "x"}]})
    assert req.messages[0].role == role


def test_unknown_role_fails():
    with pytest.raises(ValidationError):
        ChatRequest.model_validate({"messages": [{"role": "robot", "content": "x"}]})


def test_empty_messages_fail():
    with pytest.raises(ValidationError):
        ChatRequest.model_validate({"messages": []})


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_strings_parse(choice):
    assert _req(tool_choice=choice, tools=TOOLS).tool_choice == choice


@pytest.mark.parametrize(
    "choice",
    [{"function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}],
)
def test_tool_choice_named_function_parses(choice):
    assert _req(tool_choice=choice, tools=TOOLS).tool_choice.function.name == "f"


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "f"}}])
def test_a_demanded_call_without_tools_fails(choice):
    with pytest.raises(ValidationError, match="no tools are given"):
        _req(tool_choice=choice)


def test_tool_choice_unknown_string_fails():
    with pytest.raises(ValidationError):
        _req(tool_choice="sometimes")


SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "text"},
        {"type": "json_object"},
        {"type": "json", "value": SCHEMA},
        {"type": "regex", "value": "a+"},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}},
        {"type": "json_object", "value": SCHEMA},
    ],
)
def test_response_format_shapes_parse(fmt):
    rf = _req(response_format=fmt).response_format
    assert rf.type == fmt["type"]
    assert rf.value == fmt.get("value")
    assert rf.json_schema == fmt.get("json_schema")


def test_response_format_unknown_type_fails():
    with pytest.raises(ValidationError):
        _req(response_format={"type": "yaml"})


@pytest.mark.parametrize("key", ["parameters", "arguments"])
def test_tool_schema_under_parameters_or_arguments_gives_schema(key):
    tools = [{"type": "function", "function": {"name": "f", key: SCHEMA}}]
    assert _req(tools=tools).tools[0].function.schema_ == SCHEMA


def test_tool_without_schema_defaults_to_object():
    assert _req(tools=[{"function": {"name": "f"}}]).tools[0].function.schema_ == {"type": "object"}


def test_assistant_tool_calls_with_string_or_object_arguments_parse():
    req = ChatRequest.model_validate(
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        },
                        {"function": {"name": "g", "arguments": {"a": 1}}},
                    ],
                },
                {"role": "tool", "content": "1", "tool_call_id": "c1"},
            ]
        }
    )
    calls = req.messages[0].tool_calls
    assert [c.function.arguments for c in calls] == ["{}", {"a": 1}]


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", 2.5),
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("frequency_penalty", 3),
        ("presence_penalty", -3),
        ("repetition_penalty", 0),
        ("n", 0),
    ],
)
def test_out_of_range_sampling_values_fail(field, value):
    with pytest.raises(ValidationError):
        _req(**{field: value})
