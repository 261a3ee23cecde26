"""``tool_choice: "auto"`` with a ``strict: true`` tool: once the model opens a call in the tool
parser's format (Hermes ``<tool_call>``), the call's arguments follow the tool's schema.

SmolLM2's template does not render tool calls, so the conversation shows it calls written as
Hermes markup; greedy, it then opens a call of its own, with arguments that break the schema
(a city outside the enum, no unit) unless the tool is strict."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from conftest import ServerProcess

from llmserve.protocols.openai.schemas import ChatCompletionRequest
from llmserve.protocols.openai.tools import strict_tools_constraint

PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}


def _tool(strict: bool) -> dict:
    return {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                             "parameters": PARAMS, "strict": strict}}  # fmt: skip


def _call(city: str) -> dict:
    arguments = json.dumps({"city": city})
    return {
        "role": "assistant",
        "content": f'<tool_call>\n{{"name": "get_weather", "arguments": {arguments}}}\n</tool_call>',
    }


MESSAGES = [
    {"role": "system", "content": "You call tools."},
    {"role": "user", "content": "Weather in Paris?"}, _call("Paris"), {"role": "user", "content": "Result: 20"},
    {"role": "assistant", "content": "20 degrees."},
    {"role": "user", "content": "Weather in Rome?"}, _call("Rome"), {"role": "user", "content": "Result: 25"},
    {"role": "assistant", "content": "25 degrees."},
    {"role": "user", "content": "Weather in Oslo?"},
]  # fmt: skip


@pytest.fixture(scope="module")
def oai(smollm2_dir):
    proc = ServerProcess("--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--embedding-model", "none",
                         "--max-model-len", "2048")  # fmt: skip
    try:
        yield openai.OpenAI(base_url=proc.url + "/v1", api_key="x", max_retries=0, timeout=120)
    finally:
        proc.stop()


def _arguments(oai, strict: bool, **extra) -> dict:
    answer = oai.chat.completions.create(
        model="default", messages=MESSAGES, tools=[_tool(strict)], temperature=0, max_tokens=60, **extra
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    return json.loads(choice.message.tool_calls[0].function.arguments)


def test_strict_tool_arguments_follow_the_schema(oai):
    loose = _arguments(oai, strict=False)
    with pytest.raises(jsonschema.ValidationError):  # the model's own call breaks the schema
        jsonschema.validate(loose, PARAMS)
    jsonschema.validate(_arguments(oai, strict=True), PARAMS)


def test_strict_tool_arguments_stream(oai):
    chunks = oai.chat.completions.create(
        model="default", messages=MESSAGES, tools=[_tool(True)], temperature=0, max_tokens=60, stream=True
    )
    arguments = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    )
    jsonschema.validate(json.loads(arguments), PARAMS)


def test_strict_tools_with_a_response_format_is_a_400(oai):
    with pytest.raises(openai.BadRequestError, match="strict tools"):
        _arguments(oai, strict=True, response_format={"type": "json_object"})


def test_strict_tools_need_a_parser_with_a_frame():
    req = ChatCompletionRequest(messages=MESSAGES, tools=[_tool(True)])
    with pytest.raises(Exception, match="tool-call parser"):
        strict_tools_constraint(req, None)
    assert (
        strict_tools_constraint(ChatCompletionRequest(messages=MESSAGES, tools=[_tool(False)]), None) is None
    )


def test_required_calls_are_written_in_the_parsers_format(oai):
    answer = oai.chat.completions.create(
        model="default", messages=MESSAGES, tools=[_tool(False)], tool_choice="required", temperature=0,
        max_tokens=60, logprobs=True,
    )  # fmt: skip
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) >= 1
    for call in choice.message.tool_calls:
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), PARAMS)
    raw = "".join(t.token for t in choice.logprobs.content)
    assert raw.startswith('<tool_call>\n{"name": "get_weather", "arguments": '), raw


def test_required_single_call_without_parallel_calls(oai):
    answer = oai.chat.completions.create(
        model="default", messages=MESSAGES, tools=[_tool(False)], tool_choice="required", temperature=0,
        max_tokens=120, parallel_tool_calls=False, logprobs=True,
    )  # fmt: skip
    choice = answer.choices[0]
    assert len(choice.message.tool_calls) == 1
    assert "".join(t.token for t in choice.logprobs.content).count("<tool_call>") == 1
