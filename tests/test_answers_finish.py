"""Constrained answers finish within max_tokens: every schema of a table in the style of the
public JSON Schema Test Suite (json-schema-org/JSON-Schema-Test-Suite: one keyword or two per
case, from `type` to `$ref`; written out in tests/data/json_schemas.json, the suite itself is
not reachable here) answers at a small max_tokens with JSON that validates and finish_reason
"stop", or with a 400 saying that no valid answer fits. SmolLM2 samples freely: left alone it
writes strings and arrays it never closes."""

from __future__ import annotations

import concurrent.futures as cf
import json
from pathlib import Path

import httpx
import jsonschema
import pytest

CASES = json.loads((Path(__file__).parent / "data" / "json_schemas.json").read_text())
PROMPT = [{"role": "user", "content": "Write a long JSON document about a cat."}]
FORMAT_CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER
TOO_LONG = "no valid answer fits in max_tokens"
# Their shortest answers take about 60 tokens and more: refused at 64 tokens is no surprise.
LONG = {
    "many required keys",
    "string longer than a small budget",
    "array longer than a small budget",
}
# Ten keys with their values take more than 16 tokens however they are written.
NEVER_IN_16 = "many required keys"


def ask(client: httpx.Client, url: str, case: dict, max_tokens: int, seed: int) -> dict:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": case["schema"]}}
    body = {"messages": PROMPT, "max_tokens": max_tokens, "temperature": 0.9, "seed": seed,
            "response_format": fmt}  # fmt: skip
    r = client.post(f"{url}/v1/chat/completions", json=body)
    if r.status_code == 400:
        return {"refused": r.json()["error"]}
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    return {"text": choice["message"]["content"], "finish": choice["finish_reason"],
            "tokens": r.json()["usage"]["completion_tokens"]}  # fmt: skip


def verdict(case: dict, answer: dict, max_tokens: int) -> str | None:
    """What is wrong with an answer, or None."""
    if "refused" in answer:
        if TOO_LONG not in answer["refused"]:
            return f"refused for another reason: {answer['refused']}"
        return None if max_tokens < 64 or case["description"] in LONG else "refused"
    if case["description"] == NEVER_IN_16 and max_tokens == 16:
        return f"answered though no answer fits: {answer}"
    if answer["finish"] != "stop" or answer["tokens"] > max_tokens:
        return f"finish {answer['finish']}, {answer['tokens']} tokens: {answer['text']!r}"
    schema = case["schema"]
    try:
        jsonschema.validate(json.loads(answer["text"]), schema, format_checker=FORMAT_CHECKER)
    except (ValueError, jsonschema.ValidationError) as exc:
        return f"invalid: {answer['text']!r} ({str(exc).splitlines()[0]})"
    return None


@pytest.mark.parametrize("max_tokens", [16, 32, 64])
def test_every_schema_answers_valid_json_within_max_tokens_or_is_refused(base_url, max_tokens):
    with httpx.Client(timeout=300) as client, cf.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda i: ask(client, base_url, CASES[i], max_tokens, seed=i), range(len(CASES))
            )
        )
    wrong = {
        case["description"]: problem
        for case, answer in zip(CASES, answers, strict=True)
        if (problem := verdict(case, answer, max_tokens))
    }
    assert not wrong, json.dumps(wrong, indent=1)
    answered = [a for a in answers if "text" in a]
    assert len(answered) >= len(CASES) // 2  # most schemas fit even in 16 tokens
