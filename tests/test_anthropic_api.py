"""The Anthropic Messages API through a real server (SmolLM2, --api-key) with the official SDK:
whole and streamed answers, tools, count_tokens, errors, and a request shaped like Claude Code's."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import jsonschema
import pytest
from conftest import ServerProcess

from llmserve.config import build_config
from llmserve.engine.outputs import CompletionOutput, RequestOutput
from llmserve.errors import EngineDeadError, OverloadedError, RateLimitError
from llmserve.plugins import Plugins
from llmserve.protocols.anthropic import plugin as anthropic_plugin
from llmserve.protocols.anthropic.signature import key_for, sign
from llmserve.server.app import create_app
from llmserve.server.context import ProtocolContext
from llmserve.server.registry import ModelRegistry, ServedModel

KEY = "sk-ant-test"
MODEL = "smollm2"
GREEDY = {"temperature": 0}
HI = [{"role": "user", "content": "Say hello."}]
WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },  # no "type": an object all the same
}


@pytest.fixture(scope="module")
def srv(smollm2_dir):
    proc = ServerProcess(
        "--api-key", KEY, "--served-model-name", MODEL, "--embedding-model", "none", "--max-model-len", "2048",
        "--max-request-body-bytes", str(2**20),
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def sdk(srv):
    return anthropic.Anthropic(base_url=srv.url, api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(srv):
    with httpx.Client(base_url=srv.url, headers={"x-api-key": KEY}, timeout=120) as client:
        yield client


def test_create_answers_a_message(sdk):
    msg = sdk.messages.create(model=MODEL, max_tokens=12, messages=HI, system="Be brief.", extra_body=GREEDY)
    assert msg.id.startswith("msg_") and msg.type == "message" and msg.role == "assistant"
    assert msg.model == MODEL
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert 0 < msg.usage.output_tokens <= 12 and msg.usage.input_tokens > 0
    assert msg.usage.cache_creation_input_tokens == 0


def test_max_tokens_and_stop_sequence_stop_reasons(sdk):
    long = sdk.messages.create(model=MODEL, max_tokens=3, messages=HI, extra_body=GREEDY)
    assert long.stop_reason == "max_tokens" and long.usage.output_tokens == 3
    text = sdk.messages.create(model=MODEL, max_tokens=30, messages=HI, extra_body=GREEDY).content[0].text
    word = text.split()[1]
    cut = sdk.messages.create(
        model=MODEL, max_tokens=30, messages=HI, stop_sequences=[word], extra_body=GREEDY
    )
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == word
    assert word not in cut.content[0].text


def test_system_as_blocks_equals_system_as_string(sdk):
    blocks = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=1.0; cch=abc;"},
        {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
    ]
    counts = [
        sdk.messages.count_tokens(model=MODEL, messages=HI, system=system).input_tokens
        for system in ("You are terse.", blocks)
    ]
    assert counts[0] == counts[1]  # the billing header never reaches the template
    inline = [{"role": "system", "content": "You are terse."}, *HI]
    assert sdk.messages.count_tokens(model=MODEL, messages=inline).input_tokens == counts[0]
    answers = [
        sdk.messages.create(model=MODEL, max_tokens=8, messages=HI, system=system, extra_body=GREEDY)
        for system in ("You are terse.", blocks)
    ]
    assert answers[0].content[0].text == answers[1].content[0].text


def test_count_tokens_is_the_prompt_the_server_ran(sdk):
    messages = [*HI, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Again."}]
    for kwargs in ({}, {"tools": [WEATHER]}, {"system": "Be brief."}):
        count = sdk.messages.count_tokens(model=MODEL, messages=messages, **kwargs).input_tokens
        usage = sdk.messages.create(model=MODEL, max_tokens=2, messages=messages, **kwargs).usage
        ran = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
        assert count == ran, kwargs
    # the same prompt again: the prefix cache supplies most of it, and usage says so
    again = sdk.messages.create(model=MODEL, max_tokens=2, messages=messages, system="Be brief.").usage
    assert again.cache_read_input_tokens > 0
    assert again.input_tokens + again.cache_read_input_tokens == count


def test_multi_turn(sdk):
    first = sdk.messages.create(model=MODEL, max_tokens=10, messages=HI, extra_body=GREEDY)
    turns = [*HI, {"role": "assistant", "content": first.content}, {"role": "user", "content": "And again?"}]
    second = sdk.messages.create(model=MODEL, max_tokens=10, messages=turns, extra_body=GREEDY)
    assert second.content[0].text
    assert second.usage.input_tokens + second.usage.cache_read_input_tokens > first.usage.input_tokens + 10


def test_a_final_assistant_turn_is_continued(sdk, tok):
    prefill = [*HI, {"role": "assistant", "content": "Hello! My name"}]
    count = sdk.messages.count_tokens(model=MODEL, messages=prefill).input_tokens
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello! My name"}],
        tokenize=False, continue_final_message=True,
    )  # fmt: skip
    assert rendered.endswith("Hello! My name") and count == len(tok(rendered)["input_ids"])
    answer = sdk.messages.create(model=MODEL, max_tokens=5, messages=prefill, extra_body=GREEDY)
    assert answer.content[0].text


def test_stream_text_matches_the_final_message(sdk):
    with sdk.messages.stream(model=MODEL, max_tokens=16, messages=HI, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    whole = sdk.messages.create(model=MODEL, max_tokens=16, messages=HI, extra_body=GREEDY)
    assert whole.content[0].text == text and whole.stop_reason == final.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens


def _events(response: httpx.Response) -> list[tuple[str, dict]]:
    events = []
    for chunk in response.text.split("\n\n"):
        lines = [line for line in chunk.splitlines() if not line.startswith(":")]
        if lines:
            name, data = lines[0].removeprefix("event: "), json.loads(lines[1].removeprefix("data: "))
            assert data["type"] == name
            events.append((name, data))
    return events


def test_raw_event_order(http):
    body = {"model": MODEL, "max_tokens": 5, "messages": HI, "stream": True, **GREEDY}
    response = http.post(
        "/v1/messages?beta=true", json=body, headers={"anthropic-beta": "made-up-2099-01-01"}
    )
    assert response.status_code == 200 and response.headers["request-id"].startswith("req_")
    events = _events(response)
    names = [name for name, _ in events]
    assert names == ["message_start", "ping", "content_block_start", *["content_block_delta"] * (len(names) - 6),
                     "content_block_stop", "message_delta", "message_stop"]  # fmt: skip
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["input_tokens"] > 0
    assert {data["index"] for name, data in events if name.startswith("content_block")} == {0}
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 5


def _tool_events(http, choice):
    body = {"model": MODEL, "max_tokens": 80, "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [WEATHER], "tool_choice": choice, "stream": True, **GREEDY}  # fmt: skip
    return _events(http.post("/v1/messages", json=body))


@pytest.mark.parametrize("choice", [{"type": "tool", "name": "get_weather"}, {"type": "any"}])
def test_forced_tool_streams_its_input_as_json_deltas(http, choice):
    events = _tool_events(http, choice)
    start = next(data for name, data in events if name == "content_block_start")["content_block"]
    assert start["type"] == "tool_use" and start["id"].startswith("toolu_") and start["name"] == "get_weather"
    partial = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"]
    assert len(partial) > 1  # streamed as the arguments arrive
    jsonschema.validate(json.loads("".join(partial)), WEATHER["input_schema"])
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_tool_loop(sdk):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    call = sdk.messages.create(
        model=MODEL, max_tokens=80, messages=messages, tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY,
    )  # fmt: skip
    assert call.stop_reason == "tool_use"
    (use,) = call.content
    assert use.type == "tool_use" and use.id.startswith("toolu_") and use.name == "get_weather"
    jsonschema.validate(use.input, {**WEATHER["input_schema"], "type": "object"})
    result = {
        "type": "tool_result",
        "tool_use_id": use.id,
        "content": [{"type": "text", "text": "18 C, sunny"}],
    }
    messages += [{"role": "assistant", "content": call.content}, {"role": "user", "content": [result]}]
    answer = sdk.messages.create(
        model=MODEL, max_tokens=20, messages=messages, tools=[WEATHER], extra_body=GREEDY
    )
    assert answer.stop_reason in ("end_turn", "max_tokens") and answer.content[0].type == "text"
    failed = {**result, "content": "timeout", "is_error": True}
    messages[-1] = {"role": "user", "content": [failed, {"type": "text", "text": "Try to answer anyway."}]}
    assert sdk.messages.create(model=MODEL, max_tokens=5, messages=messages, tools=[WEATHER]).content


def test_output_config_format_constrains_the_text(http):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    body = {"model": MODEL, "max_tokens": 40, "messages": [{"role": "user", "content": "Pick a number."}],
            "output_config": {"format": {"type": "json_schema", "schema": schema}}, **GREEDY}  # fmt: skip
    answer = http.post("/v1/messages", json=body).json()
    jsonschema.validate(json.loads(answer["content"][0]["text"]), schema)


def _error(response: httpx.Response, status: int, type_: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == type_
    assert response.headers["request-id"].startswith("req_")
    return body["error"]["message"]


def test_auth_accepts_x_api_key_and_bearer(srv):
    body = {"model": MODEL, "max_tokens": 1, "messages": HI}
    with httpx.Client(base_url=srv.url, timeout=60) as plain:
        assert plain.post("/v1/messages", json=body, headers={"x-api-key": KEY}).status_code == 200
        assert (
            plain.post("/v1/messages", json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code
            == 200
        )
        _error(plain.post("/v1/messages", json=body), 401, "authentication_error")
        _error(plain.post("/v1/messages/count_tokens", json=body, headers={"x-api-key": "no"}), 401,
               "authentication_error")  # fmt: skip
        assert (
            "error" in plain.post("/v1/chat/completions", json=body).json()
        )  # other routes keep OpenAI's shape
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=srv.url, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=1, messages=HI
        )


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"model": MODEL, "messages": HI}, "max_tokens"),
        ({"model": MODEL, "messages": HI, "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": [], "max_tokens": 5}, "messages"),
        ({"model": MODEL, "messages": HI, "max_tokens": 5, "temperature": 3}, "temperature"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}], "max_tokens": 5}, "image"),
        ({"model": MODEL, "messages": HI, "max_tokens": 5, "tools": [WEATHER],
          "tool_choice": {"type": "tool", "name": "nope"}}, "nope"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "nonsense"}]}], "max_tokens": 5}, ""),
    ],
)  # fmt: skip
def test_bad_requests_are_invalid_request_errors(http, body, needle):
    assert needle in _error(http.post("/v1/messages", json=body), 400, "invalid_request_error")


def test_other_error_types(http, sdk):
    _error(http.post("/v1/messages", content=b"{not json"), 400, "invalid_request_error")
    _error(http.post("/v1/messages", json={"model": "claude-x", "messages": HI, "max_tokens": 5}), 404,
           "not_found_error")  # fmt: skip
    _error(http.post("/v1/messages/nope", json={}), 404, "not_found_error")
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (2**20 + 10)}], "max_tokens": 5}
    _error(http.post("/v1/messages", json=big), 413, "request_too_large")
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.create(model="claude-x", max_tokens=1, messages=HI)


# A request as Claude Code sends it (trimmed: its real tools are many and long).
def _claude_code_body(stream: bool) -> dict:
    tool = {
        "name": "Bash",
        "description": "Run a shell command. " * 40,
        "input_schema": {
            "type": "object",
            "$schema": "http://json-schema.org/draft-07/schema#",
            "additionalProperties": False,
            "properties": {"command": {"type": "string"}, "timeout": {"type": "number"}},
            "required": ["command"],
        },
    }
    tools = [
        tool,
        {
            **tool,
            "name": "Read",
            "input_schema": {
                "type": "object",
                "properties": {"file_path": {"type": "string"}},
                "required": ["file_path"],
            },
        },
        {**tool, "name": "TodoWrite"},
    ]
    return {
        "model": MODEL, "max_tokens": 32000, "stream": stream,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.0.abc; cc_entrypoint=cli; cch=00000;"},
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "You are an interactive CLI tool. " * 30, "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>Context.</system-reminder>"},
            {"type": "text", "text": "list the files", "cache_control": {"type": "ephemeral"}}]}],
        "tools": tools, "metadata": {"user_id": "user_abc_account__session_123"},
        "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "temperature": 1,
    }  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
def test_a_claude_code_request_is_answered(http, stream):
    headers = {"anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27",
               "anthropic-version": "2023-06-01", "x-app": "cli"}  # fmt: skip
    body = _claude_code_body(stream)
    body["max_tokens"] = 8  # the real 32000 would also do (it is capped to the context): slow on a CPU
    response = http.post("/v1/messages?beta=true", json=body, headers=headers)
    assert response.status_code == 200, response.text
    if stream:
        assert _events(response)[-1][0] == "message_stop"
    else:
        assert response.json()["stop_reason"] in ("end_turn", "max_tokens")


def test_max_tokens_past_the_context_is_a_ceiling(http):
    body = {**_claude_code_body(False), "max_tokens": 32000}
    count = http.post("/v1/messages/count_tokens", json=body).json()["input_tokens"]
    assert 0 < count < 2048
    body["stop_sequences"] = ["\n", " "]  # end quickly
    assert http.post("/v1/messages", json=body).status_code == 200


# --- what a real engine cannot be made to do on demand: an engine double ---------------------------


class _Stream:
    def __init__(self, request_id, prompt, pieces) -> None:
        self.request_id, self.prompt, self.pieces = request_id, prompt, pieces

    async def __aiter__(self):
        if self.pieces is None:
            yield RequestOutput(self.request_id, self.prompt, [CompletionOutput(0, "Hel", [1])])
            raise EngineDeadError("The engine stopped after an error: boom")
        for i, piece in enumerate(self.pieces):
            last = i == len(self.pieces) - 1
            out = CompletionOutput(
                0, piece, [i], finish_reason="stop" if last else None, num_output_tokens=i + 1
            )
            yield RequestOutput(self.request_id, self.prompt, [out], finished=last)

    async def result(self):
        out = CompletionOutput(0, "".join(self.pieces), list(range(len(self.pieces))), finish_reason="stop")
        return RequestOutput(self.request_id, self.prompt, [out], finished=True)

    async def ready(self) -> None:  # no output constraint to wait for
        pass

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class _Engine:
    is_dead = False

    def __init__(self, error: BaseException | None = None, pieces: list[str] | None = None) -> None:
        self.error, self.pieces = error, pieces

    def add_request(self, request_id, prompt_token_ids, params, **_):
        if self.error is not None:
            raise self.error
        return _Stream(request_id, prompt_token_ids, self.pieces)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def _app(smollm2_dir, tok, engine, **config):
    config = build_config(model=str(smollm2_dir), **config)
    plugins = Plugins({"LLMSERVE_PLUGINS": "anthropic,parsers"}).load(extra=[("anthropic", anthropic_plugin)])
    model = ServedModel("m", str(smollm2_dir), "generate", tok, 2048, engine=engine)
    return create_app(config, ProtocolContext(config, plugins, ModelRegistry([model])), plugins)


async def test_failure_mid_stream_is_an_error_event(smollm2_dir, tok):
    client = _app(smollm2_dir, tok, _Engine()).test_client()
    response = await client.post(
        "/v1/messages", json={"max_tokens": 5, "messages": HI, "stream": True, "model": "m"}
    )
    assert response.status_code == 200
    chunks = [c for c in (await response.get_data(as_text=True)).split("\n\n") if c]
    assert [c.split("\n")[0] for c in chunks] == ["event: message_start", "event: ping", "event: content_block_start",
                                                  "event: content_block_delta", "event: error"]  # fmt: skip
    error = json.loads(chunks[-1].split("\n")[1].removeprefix("data: "))
    assert error == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": error["error"]["message"]},
    }


@pytest.mark.parametrize(
    ("error", "status", "type_"),
    [
        (OverloadedError("Too many requests in flight; try again later."), 529, "overloaded_error"),
        (RateLimitError("Rate limit exceeded"), 429, "rate_limit_error"),
        (RuntimeError("bug"), 500, "api_error"),
    ],
)
async def test_engine_refusals_take_anthropic_types(smollm2_dir, tok, error, status, type_):
    client = _app(smollm2_dir, tok, _Engine(error)).test_client()
    response = await client.post("/v1/messages", json={"max_tokens": 5, "messages": HI, "model": "m"})
    assert response.status_code == status
    body = await response.get_json()
    assert body["type"] == "error" and body["error"]["type"] == type_
    assert response.headers["request-id"].startswith("req_")


THOUGHT = ["<think>", "Let me", " think.", "</think>", "Hi", " there."]


async def test_reasoning_becomes_a_thinking_block_first(smollm2_dir, tok):
    app = _app(smollm2_dir, tok, _Engine(pieces=THOUGHT), reasoning_parser="deepseek_r1")
    client = app.test_client()
    body = {
        "max_tokens": 50,
        "messages": HI,
        "model": "m",
        "thinking": {"type": "enabled", "budget_tokens": 20},
    }
    whole = await (await client.post("/v1/messages", json=body)).get_json()
    assert whole["content"] == [
        {
            "type": "thinking",
            "thinking": "Let me think.",
            "signature": sign(key_for(None, "m"), "Let me think."),
        },
        {"type": "text", "text": "Hi there."},
    ]
    response = await client.post("/v1/messages", json={**body, "stream": True})
    events = [
        (name.removeprefix("event: "), json.loads(data.removeprefix("data: ")))
        for name, data in (c.split("\n") for c in (await response.get_data(as_text=True)).split("\n\n") if c)
    ]
    blocks = [(n, d["index"], d.get("delta", d.get("content_block", {})).get("type")) for n, d in events
              if n.startswith("content_block")]  # fmt: skip
    assert blocks == [
        ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"), ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, None), ("content_block_start", 1, "text"),
        ("content_block_delta", 1, "text_delta"), ("content_block_delta", 1, "text_delta"),
        ("content_block_stop", 1, None),
    ]  # fmt: skip
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert events[-2][1]["usage"]["output_tokens"] == len(THOUGHT)
    signature = next(
        d["delta"]["signature"] for n, d in events if d.get("delta", {}).get("type") == "signature_delta"
    )
    assert signature == whole["content"][0]["signature"]


def _running(srv) -> float:
    for line in httpx.get(srv.url + "/metrics").text.splitlines():
        if line.startswith("llmserve:num_requests_running{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no num_requests_running metric")


def _wait(srv, want: bool) -> bool:
    deadline = time.monotonic() + 15
    while (_running(srv) >= 1) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return (_running(srv) >= 1) == want


def test_disconnect_aborts_the_request(srv, http):
    assert _wait(srv, False)
    prompt = [{"role": "user", "content": "Write the word hello 500 times."}]
    body = {"model": MODEL, "max_tokens": 1500, "messages": prompt, "stream": True, **GREEDY}
    with http.stream("POST", "/v1/messages", json=body) as response:
        lines = response.iter_lines()  # kept: a dropped iterator closes the response
        assert next(lines) == "event: message_start"
        assert _wait(srv, True)
    assert _wait(srv, False)  # well before 1500 tokens could have been generated
    assert _aborts(srv) >= 1  # counted, as vLLM counts them


def _aborts(srv) -> float:
    for line in httpx.get(srv.url + "/metrics", headers={"x-api-key": KEY}).text.splitlines():
        if line.startswith("llmserve:request_success_total{") and 'finished_reason="abort"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_server_tool_blocks_are_skipped(http):
    search = [
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "moon"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1",
         "content": [{"type": "web_search_result", "url": "https://example.com", "title": "Moon",
                      "encrypted_content": "abc"}]},
        {"type": "text", "text": "The moon is far."},
    ]  # fmt: skip
    turns = [*HI, {"role": "assistant", "content": search}, {"role": "user", "content": "How far?"}]
    plain = [*HI, {"role": "assistant", "content": search[-1:]}, {"role": "user", "content": "How far?"}]
    count = http.post("/v1/messages/count_tokens", json={"model": MODEL, "messages": turns})
    assert count.status_code == 200, count.text
    assert (
        count.json()
        == http.post("/v1/messages/count_tokens", json={"model": MODEL, "messages": plain}).json()
    )
    answer = http.post("/v1/messages", json={"model": MODEL, "messages": turns, "max_tokens": 2})
    assert answer.status_code == 200, answer.text


def test_overload_and_rate_limit_from_a_real_server(smollm2_dir):
    """529 from a sleeping engine and 429 past --max-concurrent-requests, each with its header."""
    proc = ServerProcess("--enable-sleep-mode", "--max-concurrent-requests", "1", "--embedding-model", "none",
                         "--max-model-len", "512")  # fmt: skip
    try:
        with proc.http(timeout=60) as http:
            body = {"model": "default", "messages": HI, "max_tokens": 2}
            long = {"prompt": "Once", "max_tokens": 400, "ignore_eos": True, "stream": True}
            with http.stream("POST", "/v1/completions", json=long) as held:
                lines = held.iter_lines()  # kept: a dropped line iterator closes the response
                next(lines)  # in flight now
                limited = http.post("/v1/messages", json=body)
                assert _error(limited, 429, "rate_limit_error")
                assert limited.headers["retry-after"]
            time.sleep(0.5)  # the held stream is aborted once its body is closed
            assert http.post("/sleep").status_code == 200, http.post("/sleep").text
            sleeping = http.post("/v1/messages", json=body)
            assert "sleeping" in _error(sleeping, 529, "overloaded_error")
            assert http.post("/wake_up").status_code == 200
            assert http.post("/v1/messages", json=body).status_code == 200
    finally:
        proc.stop()
