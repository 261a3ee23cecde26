"""Chat templates: --chat-template loading, content-format detection and rendering (no model run)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from llmserve.config import build_config
from llmserve.errors import ConfigError, InvalidRequestError
from llmserve.protocols.shared import chat_template
from llmserve.protocols.shared.chat_template import detect_content_format, load_chat_template
from llmserve.server.registry import ServedModel

# Renders tools, loops over content parts (so "auto" picks the openai format), reads parsed
# tool-call arguments and a chat_template_kwargs variable.
TOOLS_TEMPLATE = """\
{%- if tools %}<|im_start|>system
Tools:{% for t in tools %} {{ t.function.name }}{% endfor %}<|im_end|>
{% endif %}
{%- for message in messages %}<|im_start|>{{ message.role }}
{% for part in message.content %}{{ part.text }}{% endfor %}
{%- if message.tool_calls %}{% for c in message.tool_calls %}call {{ c.function.name }}\
(city={{ c.function.arguments.city }}){% endfor %}{% endif %}<|im_end|>
{% endfor %}
{%- if greeting is defined %}<|im_start|>system
{{ greeting }}<|im_end|>
{% endif %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
USER = [{"role": "user", "content": "Hi"}]


def make_state(tok, **config):
    model = ServedModel("m", "/m", "generate", tok, 2048)
    return SimpleNamespace(model=model, config=build_config(model="x", **config))


def render_chat(state, *args, **kwargs):
    return chat_template.render_chat(state.model, state.config, *args, **kwargs)


@pytest.fixture(scope="module")
def template_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tpl") / "tools.jinja"
    path.write_text(TOOLS_TEMPLATE)
    return str(path)


def test_tokenizer_template_and_token_ids(tok):
    text, ids = render_chat(make_state(tok), USER)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert ids == tok(text, add_special_tokens=False).input_ids


def test_template_file_renders_tools_kwargs_and_parsed_arguments(tok, template_file):
    state = make_state(tok, chat_template=template_file)
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
    }
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": [call]}]
    messages.append({"role": "tool", "tool_call_id": "c1", "content": "sunny"})
    text, _ = render_chat(state, messages, tools=[WEATHER], chat_template_kwargs={"greeting": "Bonjour"})
    assert text.startswith("<|im_start|>system\nTools: get_weather<|im_end|>")
    assert "call get_weather(city=Paris)" in text and "sunny" in text and "Bonjour" in text
    without, _ = render_chat(state, USER)
    assert "Tools:" not in without and "Bonjour" not in without


def test_reserved_template_kwargs_are_ignored(tok):
    text, _ = render_chat(
        make_state(tok), USER, chat_template_kwargs={"add_generation_prompt": False, "tokenize": True}
    )
    assert text.endswith("<|im_start|>assistant\n")


def test_content_format_auto_detection(tok, template_file):
    assert detect_content_format(tok.chat_template) == "string"
    assert detect_content_format(TOOLS_TEMPLATE) == "openai"
    aliased = "{% set msgs = messages %}{% for m in msgs %}{% for p in m['content'] | list %}{% endfor %}{% endfor %}"
    assert detect_content_format(aliased) == "openai"
    assert (
        detect_content_format("{% for m in messages %}{% for x in m.other %}{% endfor %}{% endfor %}")
        == "string"
    )
    parts = [{"role": "user", "content": [{"type": "text", "text": "ab"}, {"type": "text", "text": "cd"}]}]
    assert "user\nab\ncd<|im_end|>" in render_chat(make_state(tok), parts)[0]
    # the openai-format template gets parts (a string content is wrapped into one text part)
    state = make_state(tok, chat_template=template_file)
    assert "user\nabcd<|im_end|>" in render_chat(state, parts)[0]
    assert "user\nHi<|im_end|>" in render_chat(state, USER)[0]


def test_forced_openai_format_on_a_string_template_is_a_clear_400(tok):
    state = make_state(tok, chat_template_content_format="openai")
    with pytest.raises(InvalidRequestError, match="could not render"):
        render_chat(state, USER)


def test_inline_template_and_bad_path():
    assert load_chat_template("{{ 'a' }}\\n{{ 'b' }}") == "{{ 'a' }}\n{{ 'b' }}"
    with pytest.raises(ConfigError, match="looks like a file path"):
        load_chat_template("/no/such/template.jinja")


def test_client_mistakes_are_400(tok):
    state = make_state(tok)
    raising = "{{ raise_exception('Conversation roles must alternate') }}"
    cases = [
        ({"messages": []}, "must not be empty"),
        ({"messages": [{"content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": 5}]}, "content"),
        ({"messages": USER, "continue_final_message": True}, "Cannot set both"),
        ({"messages": USER, "chat_template": raising}, "--trust-request-chat-template"),
    ]
    for kwargs, match in cases:
        with pytest.raises(InvalidRequestError, match=match):
            render_chat(state, **kwargs)
    trusted = make_state(tok, trust_request_chat_template=True)
    with pytest.raises(InvalidRequestError, match="Conversation roles must alternate"):
        render_chat(trusted, USER, chat_template=raising)


def test_continue_final_message(tok):
    messages = [*USER, {"role": "assistant", "content": "Hello, I am"}]
    text, _ = render_chat(make_state(tok), messages, add_generation_prompt=False, continue_final_message=True)
    assert text.endswith("<|im_start|>assistant\nHello, I am")
