"""Tool calling end to end with a real tool-calling model (Qwen2.5-Coder-0.5B-Instruct) through the
real server and the official openai SDK: auto (the ``auto`` parser reads what the model really
writes), required and named (enforced by structured outputs), streaming and not, and a tool loop
rendered through the model's chat template."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from conftest import ServerProcess

from llmserve.sources import packs

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def qwen():
    return packs.ensure_model("qwen2.5-coder-0.5b")


@pytest.fixture(scope="module")
def client(qwen):
    proc = ServerProcess(
        str(qwen), "--served-model-name", "qwen", "--enable-auto-tool-choice", "--tool-call-parser", "auto",
        "--embedding-model", "none", "--max-model-len", "1024", "--kv-cache-space", "0.5",
    )  # fmt: skip
    try:
        yield openai.OpenAI(base_url=proc.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    finally:
        proc.stop()


def _args(call, tool) -> dict:
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, tool["function"]["parameters"])
    return arguments


def _streamed_calls(stream) -> tuple[dict[int, dict], str | None]:
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"name": None, "arguments": ""})
            if delta.function.name:
                assert entry["name"] is None and not entry["arguments"]  # the name comes first
                entry["name"] = delta.function.name
            entry["arguments"] += delta.function.arguments or ""
    return calls, finish


def test_auto_parses_what_the_model_writes(client):
    kwargs = dict(model="qwen", messages=ASK, tools=[WEATHER, TIME], tool_choice="auto", max_tokens=60,
                  temperature=0)  # fmt: skip
    out = client.chat.completions.create(**kwargs)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and "paris" in _args(call, WEATHER)["city"].lower()
    calls, finish = _streamed_calls(client.chat.completions.create(**kwargs, stream=True))
    assert finish == "tool_calls" and calls[0]["name"] == "get_weather"
    assert calls[0]["arguments"] == call.function.arguments  # the deltas add up to the same JSON


@pytest.mark.parametrize("stream", [False, True])
def test_required_and_named_follow_the_schemas(client, stream):
    for choice_arg in ("required", {"type": "function", "function": {"name": "get_time"}}):
        kwargs = dict(model="qwen", messages=ASK, tools=[WEATHER, TIME], tool_choice=choice_arg,
                      max_tokens=60, temperature=0)  # fmt: skip
        if stream:
            calls, _ = _streamed_calls(client.chat.completions.create(**kwargs, stream=True))
            made = [(c["name"], json.loads(c["arguments"])) for c in calls.values()]
        else:
            message = client.chat.completions.create(**kwargs).choices[0].message
            made = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]
        assert made
        for name, arguments in made:
            tool = {"get_weather": WEATHER, "get_time": TIME}[name]
            jsonschema.validate(arguments, tool["function"]["parameters"])
        if isinstance(choice_arg, dict):
            assert [name for name, _ in made] == ["get_time"]


def test_tool_loop_renders_calls_and_results(client):
    first = client.chat.completions.create(model="qwen", messages=ASK, tools=[WEATHER], tool_choice="required",
                                           max_tokens=60, temperature=0)  # fmt: skip
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {
            "role": "tool",
            "tool_call_id": call.id,
            "content": json.dumps({"temperature_c": 21, "sky": "clear"}),
        },
    ]
    answer = client.chat.completions.create(model="qwen", messages=messages, tools=[WEATHER], max_tokens=40,
                                            temperature=0, tool_choice="none")  # fmt: skip
    text = answer.choices[0].message.content
    assert (
        answer.choices[0].finish_reason in ("stop", "length")
        and text
        and not answer.choices[0].message.tool_calls
    )
    assert "21" in text or "clear" in text.lower(), text


def test_parallel_tool_calls_false_returns_one_call(client):
    out = client.chat.completions.create(
        model="qwen", tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False, max_tokens=80,
        messages=[{"role": "user", "content": "Weather and time in Paris and in Rome?"}], temperature=0,
    )  # fmt: skip
    assert len(out.choices[0].message.tool_calls) == 1
