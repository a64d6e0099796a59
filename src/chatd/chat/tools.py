"""Tool calling: tools into the prompt, tool_choice into a grammar, output into tool_calls.

Models whose chat template knows `tools` (Qwen2.5) get them through the template and answer
`<tool_call>{"name", "arguments"}</tool_call>`; others get `tool_prompt` and the tool list in
the system turn and answer with a bare JSON object. Either way one lenient parser reads the
output (native blocks, bare JSON, ```json fences), for streams and whole answers alike.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from chatd.chat.errors import RequestError
from chatd.engine.constraints import JSON_OPTIONS, lark_grammar
from chatd.engine.runners.base import Tokenizer
from chatd.engine.types import Grammar
from chatd.protocol.echo import echo
from chatd.protocol.request import ChatRequest, NamedToolChoice, Tool

# TGI's default, which HF users know: put before the tool list.
DEFAULT_TOOL_PROMPT = (
    "You will be presented with a JSON schema representing a set of tools.\n"
    "If the user request lacks of sufficient information to make a precise tool selection: "
    "Do not invent any tool's properties, instead notify with an error message.\n\n"
    "JSON Schema:\n"
)
FALLBACK_FORMAT = (
    '\n\nTo call a tool, answer with only a JSON object: {"name": <tool name>, '
    '"arguments": <the arguments as an object>}.'
)
OPEN, CLOSE = "<tool_call>", "</tool_call>"
# How an answer that is a call begins: the lazy grammar takes hold on these, and a stream
# holds back text that may still become one of them.
CALL_STARTS = (OPEN, "{", "```json")


class ToolChoiceError(RequestError):
    pass


@dataclass
class ToolPlan:
    tools: list[dict[str, Any]]  # OpenAI-shaped, as templates expect them
    native: bool  # the chat template renders tools itself
    prompt: str  # tool_prompt, for templates that do not
    forced: bool  # required or a named tool: the answer must be a call


def plan_tools(body: ChatRequest, template_source: str) -> ToolPlan | None:
    """None when the request has no tools or tool_choice is none."""
    if not body.tools or body.tool_choice == "none":
        return None  # (a call demanded without tools is refused with the request)
    tools = body.tools
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        names = {t.function.name for t in tools}
        if choice.function.name not in names:
            raise ToolChoiceError(
                f"tool_choice: no tool named {echo(choice.function.name)} "
                f"(tools: {', '.join(map(echo, sorted(names)))})"
            )
        tools = [t for t in tools if t.function.name == choice.function.name]
    return ToolPlan(
        tools=[_openai_tool(t) for t in tools],
        native="tools" in template_source,
        prompt=body.tool_prompt if body.tool_prompt is not None else DEFAULT_TOOL_PROMPT,
        forced=choice == "required" or isinstance(choice, NamedToolChoice),
    )


def _openai_tool(tool: Tool) -> dict[str, Any]:
    f = tool.function
    out = {"name": f.name, "parameters": f.schema_}
    if f.description:
        out["description"] = f.description
    return {"type": "function", "function": out}


def with_tool_prompt(messages: list[dict[str, Any]], plan: ToolPlan) -> list[dict[str, Any]]:
    """For templates without tools: tool_prompt and the tool list open the system turn."""
    listing = json.dumps([t["function"] for t in plan.tools], ensure_ascii=False)
    text = f"{plan.prompt}{listing}{FALLBACK_FORMAT}"
    if messages and messages[0]["role"] == "system":
        content = messages[0]["content"]
        if isinstance(content, list):  # a vision model's content parts
            content = [*content, {"type": "text", "text": f"\n\n{text}"}]
        else:
            content = f"{content}\n\n{text}"
        return [{**messages[0], "content": content}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def calls_grammar(plan: ToolPlan, tokenizer: Tokenizer) -> Grammar:
    """Forced: the whole answer is calls. Auto: once the answer starts like a call, it is one."""
    text = lark_grammar(_calls_lark(plan, tokenizer))
    return Grammar(text) if plan.forced else Grammar(text, triggers=CALL_STARTS)


def _calls_lark(plan: ToolPlan, tokenizer: Tokenizer) -> str:
    # Each tool's schema sits under $defs, its own root-relative refs ("#", "#/$defs/X") moved
    # below it: nested in the call object as they are, they would point at the wrong root.
    call = {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": t["function"]["name"]},
                    "arguments": {"$ref": f"#/$defs/tool{i}"},
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for i, t in enumerate(plan.tools)
        ],
        "$defs": {
            f"tool{i}": _rebased(t["function"]["parameters"], f"#/$defs/tool{i}")
            for i, t in enumerate(plan.tools)
        },
        "x-guidance": JSON_OPTIONS,
    }
    open_, close = _token_ref(OPEN, tokenizer), _token_ref(CLOSE, tokenizer)
    return (
        "start: WS? (native | call | fenced)\n"
        f"native: ({open_} WS? call WS? {close} WS?)+\n"
        'fenced: "```json" WS? call WS? "```"\n'
        f"call: %json {json.dumps(call)}\n"
        "WS: /[ \\t\\n]+/\n"
    )


def _rebased(schema: Any, root: str) -> Any:
    """The schema with every local $ref ("#...") made relative to `root` instead."""
    if isinstance(schema, dict):
        return {
            k: root + v[1:] if k == "$ref" and isinstance(v, str) and v.startswith("#")
            else _rebased(v, root)
            for k, v in schema.items()
        }  # fmt: skip
    if isinstance(schema, list):
        return [_rebased(v, root) for v in schema]
    return schema


def _token_ref(text: str, tokenizer: Tokenizer) -> str:
    """A marker that is one special token must be matched as that token, not spelled out."""
    ids = tokenizer.encode(text)
    return f"<[{ids[0]}]>" if len(ids) == 1 else json.dumps(text)


# -- reading the answer ---------------------------------------------------------------------

_NATIVE = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CLOSE) + r"|$)", re.S)
# A fence's JSON may hold ``` inside its strings (Markdown in an argument): only a fence
# outside a string closes it.
_FENCED = re.compile(r'```(?:json)?\s*((?:"(?:\\.|[^"\\])*"|[^"`])*?)\s*```', re.S)


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, calls) from an answer. Content is what is left outside the calls."""
    for pattern in (_NATIVE, _FENCED):
        calls = [c for m in pattern.finditer(text) for c in _calls_in(m.group(1))]
        if calls:
            return (pattern.sub("", text).strip() or None), calls
    calls = _calls_in(text.strip())
    if calls:
        return None, calls
    return text, []


def _calls_in(blob: str) -> list[dict[str, Any]]:
    """A JSON call object, or a list of them, with name and arguments (or parameters)."""
    try:
        value = json.loads(blob)
    except json.JSONDecodeError:
        return []
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not (isinstance(item, dict) and isinstance(item.get("name"), str)):
            return []
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):  # some models double-encode
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return []
        if not isinstance(args, dict):
            return []
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": item["name"], "arguments": json.dumps(args)},
            }
        )
    return calls


class ToolCallStream:
    """Per streamed choice: passes plain text on at once, holds what may be a call."""

    def __init__(self, forced: bool):
        self._forced = forced
        self._held = ""
        self._plain = False

    def feed(self, text: str) -> str:
        if self._plain:
            return text
        self._held += text
        head = self._held.lstrip()
        if self._forced or not head or _may_be_call(head):
            return ""
        self._plain, out, self._held = True, self._held, ""
        return out

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """The held text as (content, calls) once the choice is done."""
        if self._plain or not self._held:
            return "", []
        content, calls = parse_tool_calls(self._held)
        return content or "", calls


def _may_be_call(head: str) -> bool:
    return any(head.startswith(p) or p.startswith(head) for p in CALL_STARTS)
