"""Chat templates, rendered the way transformers renders them (sandboxed Jinja, same helpers)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from chatd.chat.errors import RequestError

# Used when a model file carries no template of its own.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class TemplateRenderError(RequestError):
    """The template refused the conversation (e.g. roles that do not alternate)."""


def _raise_exception(message: str):
    raise TemplateRenderError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class ChatTemplate:
    def __init__(self, source: str | None, bos_token: str = "", eos_token: str = ""):
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source or CHATML
        self._template = env.from_string(self.source)
        self._specials = {"bos_token": bos_token, "eos_token": eos_token}

    def render(self, messages: list[dict[str, Any]], tools: list[dict] | None = None) -> str:
        try:
            return self._template.render(
                messages=messages, tools=tools, add_generation_prompt=True, **self._specials
            )
        except TemplateRenderError:
            raise
        except Exception as exc:  # Jinja's errors, and plain Python ones inside the template
            raise TemplateRenderError(f"the chat template failed: {exc}") from exc
