"""chat/template.py: chat templates rendered as transformers renders them, and their errors."""

from __future__ import annotations

import json

import pytest

from chatd.chat.errors import RequestError
from chatd.chat.template import CHATML, ChatTemplate, TemplateRenderError

HI = [{"role": "user", "content": "Hi"}]


def test_no_template_means_chatml_with_the_generation_prompt():
    template = ChatTemplate(None)
    assert template.source == CHATML
    text = template.render([{"role": "system", "content": "Be brief."}, *HI])
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_the_generation_prompt_is_always_asked_for():
    template = ChatTemplate("{{ 'open' if add_generation_prompt else 'closed' }}")
    assert template.render(HI) == "open"


def test_special_tokens_and_tools_reach_the_template():
    source = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}"
    assert ChatTemplate(source, bos_token="<s>", eos_token="</s>").render(HI) == "<s>Hi</s>"
    tools = [{"type": "function", "function": {"name": "f"}}]
    listing = ChatTemplate("{% for t in tools %}{{ t | tojson }}{% endfor %}").render(HI, tools)
    assert json.loads(listing) == tools[0]
    assert ChatTemplate("{{ tools is none }}").render(HI) == "True"


def test_tojson_keeps_non_ascii_and_takes_transformers_arguments():
    source = "{{ messages[0] | tojson(indent=2, sort_keys=True) }}"
    text = ChatTemplate(source).render([{"role": "user", "content": "café"}])
    assert text == json.dumps({"content": "café", "role": "user"}, indent=2, ensure_ascii=False)


def test_whitespace_control_and_loop_controls_as_in_transformers():
    source = (
        "{% for m in messages %}\n"
        "  {% if loop.index > 1 %}{% break %}{% endif %}\n"
        "[{{ m.content }}]\n"
        "{% endfor %}"
    )  # trim_blocks and lstrip_blocks drop the block lines; `break` is allowed
    assert ChatTemplate(source).render([*HI, {"role": "user", "content": "again"}]) == "[Hi]\n"


def test_strftime_now_is_available():
    assert ChatTemplate("{{ strftime_now('%Y') }}").render(HI).isdigit()


def test_raise_exception_becomes_a_template_render_error_with_its_message():
    source = (
        "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate') }}{% endif %}{% endfor %}"
    )
    template = ChatTemplate(source)
    assert template.render(HI) == ""
    with pytest.raises(TemplateRenderError, match="^roles must alternate$"):
        template.render([*HI, *HI])


def test_jinja_errors_while_rendering_become_template_render_errors():
    template = ChatTemplate("{{ messages[0].nothing.deeper }}")  # UndefinedError
    with pytest.raises(TemplateRenderError, match="the chat template failed"):
        template.render(HI)


def test_the_sandbox_refuses_unsafe_access():
    template = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(TemplateRenderError):
        template.render(HI)
    with pytest.raises(TemplateRenderError):  # immutable: templates cannot change the turns
        ChatTemplate("{{ messages.append(1) }}").render(HI)


def test_python_errors_inside_a_template_become_template_render_errors():
    """A template's own bug (str + int) is the template's: a 400, not a 500."""
    with pytest.raises(TemplateRenderError, match="the chat template failed"):
        ChatTemplate("{{ messages[0].content + 1 }}").render(HI)


def test_render_errors_are_request_errors():
    # The server answers every RequestError from building a prompt with a 400.
    assert issubclass(TemplateRenderError, RequestError)
