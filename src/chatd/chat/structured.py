"""response_format, in all six shapes both dialects send, as a grammar (or None for text)."""

from __future__ import annotations

import json
from typing import Any

from chatd.engine.constraints import GrammarError, json_schema_grammar, regex_grammar
from chatd.protocol.request import ResponseFormat

ANY_OBJECT = {"type": "object"}


def response_format_grammar(fmt: ResponseFormat | None) -> str | None:
    """Raises GrammarError for a schema or pattern that is not usable."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "regex":
        if not isinstance(fmt.value, str) or not fmt.value:
            raise GrammarError("type 'regex' needs the pattern as a string in 'value'")
        return regex_grammar(fmt.value)
    if fmt.type == "json_schema":
        schema = _json_schema(fmt)
    else:  # HF "json" and "json_object" carry the schema in "value"; none means any object
        schema = fmt.value
    return json_schema_grammar(_schema(schema))


def _json_schema(fmt: ResponseFormat) -> Any:
    """OpenAI's {"json_schema": {"name", "schema", "strict"}}, or TGI's same object in
    "value". Without a schema there is nothing to follow: refused, never taken as any object."""
    for holder in (fmt.json_schema, fmt.value):
        if isinstance(holder, dict) and holder.get("schema") is not None:
            return holder["schema"]
    raise GrammarError(
        "type 'json_schema' needs the schema in json_schema.schema "
        '(OpenAI: {"json_schema": {"name": ..., "schema": {...}}})'
    )


def _schema(schema: Any) -> dict[str, Any]:
    if schema is None:
        return ANY_OBJECT
    if isinstance(schema, str):  # HF documents the schema as a string holding JSON
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise GrammarError(f"the schema is not valid JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise GrammarError(f"a JSON schema must be an object, got {type(schema).__name__}")
    return schema
