"""/v1/responses through a real server (SmolLM2) with the official openai SDK, and its store."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import httpx
import jsonschema
import openai
import pytest
from conftest import ServerProcess
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from llmserve.api import CompletionOutput, ParserPipeline, RequestOutput
from llmserve.protocols.responses.events import EventWriter
from llmserve.protocols.responses.items import normalize_input, to_messages
from llmserve.protocols.responses.output import ResponseShell
from llmserve.protocols.responses.schemas import ResponseRequest
from llmserve.protocols.responses.store import MemoryStore, ResponseNotFoundError, SQLiteStore, StoredResponse

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def _running(server: ServerProcess) -> float:
    with server.http(timeout=30) as http:
        text = http.get("/metrics").text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("llmserve:num_requests_running{")
    )


def _start(store: str) -> ServerProcess:
    return ServerProcess("--max-model-len", "2048", "--embedding-model", "none", "--responses-store", store)


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('responses') / 'store.sqlite'}"


@pytest.fixture(scope="module")
def server(smollm2_dir, store_url):
    proc = _start(store_url)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


def test_string_input_and_instructions(client, model):
    plain = client.responses.create(model=model, input="Say hi.", max_output_tokens=4, temperature=0)
    instructions = "Answer in French. " * 8  # longer than the default system prompt SmolLM2 adds
    told = client.responses.create(
        model=model, input="Say hi.", instructions=instructions, max_output_tokens=4, temperature=0
    )
    for r in (plain, told):
        assert r.id.startswith("resp_") and r.object == "response"
        assert [item.type for item in r.output] == ["message"]
        assert r.output_text == r.output[0].content[0].text
        assert r.usage.output_tokens <= 4
        assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert told.instructions == instructions
    assert told.usage.input_tokens > plain.usage.input_tokens  # the system message was rendered


def test_items_input_and_max_output_tokens(client, model):
    items = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "My name is Ada."}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello Ada!"}]},
        {"role": "user", "content": "What is my name?"},
    ]
    r = client.responses.create(model=model, input=items, max_output_tokens=2, metadata={"k": "v"})
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 2
    assert r.metadata == {"k": "v"}
    listed = client.responses.input_items.list(r.id, order="asc").data
    assert [item.role for item in listed] == ["user", "assistant", "user"]


def test_streaming_events(client, model):
    events = list(
        client.responses.create(model=model, input="Count to three.", max_output_tokens=6, stream=True)
    )
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert types[:4] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"
    ]  # fmt: skip
    assert types[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert types[-1] in ("response.completed", "response.incomplete")
    assert set(types[4:-4]) == {"response.output_text.delta"}
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert events[-4].text == text == final.output_text
    assert events[0].response.status == "in_progress" and final.usage.output_tokens <= 6
    assert client.responses.retrieve(final.id).output_text == text  # stored once finished


def test_sdk_stream_helper(client, model):
    # responses.stream rebuilds the response from the events: their shapes must fit the SDK's
    with client.responses.stream(model=model, input="Say hi.", max_output_tokens=30) as stream:
        types = [event.type for event in stream]
        if types[-1] == "response.completed":
            final = stream.get_final_response()
            assert final.output_text and final.status == "completed"
    assert types[0] == "response.created" and "response.output_text.delta" in types


def test_streamed_function_call(client, model):
    events = list(
        client.responses.create(
            model=model, input="Weather in Rome?", tools=[WEATHER], tool_choice="required",
            parallel_tool_calls=False, max_output_tokens=80, temperature=0, stream=True,
        )
    )  # fmt: skip
    added = [e.item for e in events if e.type == "response.output_item.added"]
    assert [item.type for item in added] == ["function_call"] and added[0].name == "get_weather"
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert done.arguments == deltas and json.loads(deltas)["city"]
    final = events[-1].response
    assert final.output[0].call_id == added[0].call_id and final.output[0].arguments == deltas


def test_three_turn_chain(client, model):
    turn, sizes = None, []
    for text in ("I have a cat called Tom.", "I also have a dog.", "What are my pets called?"):
        turn = client.responses.create(
            model=model, input=text, previous_response_id=turn.id if turn else None, max_output_tokens=8
        )
        sizes.append(turn.usage.input_tokens)
    assert sizes[0] < sizes[1] < sizes[2]
    assert sizes[2] > sizes[1] + 8  # the second turn's question and answer were replayed too


@pytest.mark.parametrize("stream", [False, True])
def test_output_text_logprobs(client, model, stream):
    fields = dict(model=model, input="Say hi.", max_output_tokens=5, top_logprobs=2)
    answer = client.responses.create(**fields, include=["message.output_text.logprobs"], stream=stream)
    if stream:
        events = list(answer)
        streamed = [lp for e in events if e.type == "response.output_text.delta" for lp in e.logprobs]
        answer = events[-1].response
        assert [lp.model_dump() for lp in streamed] == [
            lp.model_dump() for lp in answer.output[0].content[0].logprobs
        ]
    logprobs = answer.output[0].content[0].logprobs
    assert len(logprobs) == answer.usage.output_tokens
    assert "".join(lp.token for lp in logprobs) == answer.output_text
    assert all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in logprobs)
    plain = client.responses.create(**fields)
    assert plain.output[0].content[0].logprobs == []


def test_function_tool_loop(client, model):
    first = client.responses.create(
        model=model, input="What is the weather in Paris?", tools=[WEATHER], tool_choice="required",
        parallel_tool_calls=False, max_output_tokens=80, temperature=0,
    )  # fmt: skip
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    answer = client.responses.create(
        model=model, previous_response_id=first.id, tools=[WEATHER], max_output_tokens=20,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 22 C"}],
    )  # fmt: skip
    assert answer.previous_response_id == first.id
    assert [item.type for item in answer.output] == ["message"]
    # the whole exchange (question, call, its output) was replayed to the model
    assert answer.usage.input_tokens > first.usage.input_tokens + 5
    listed = client.responses.input_items.list(answer.id).data
    assert [item.type for item in listed] == ["function_call_output"]


def test_json_schema_output(client, model):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    r = client.responses.create(
        model=model, input="Describe a person as JSON.", max_output_tokens=100, temperature=0,
        text={"format": {"type": "json_schema", "name": "person", "schema": schema}},
    )  # fmt: skip
    jsonschema.validate(json.loads(r.output_text), schema)
    assert r.text.format.type == "json_schema"


def test_retrieve_delete_and_store_false(client, model):
    r = client.responses.create(model=model, input="Hi", max_output_tokens=2)
    assert client.responses.retrieve(r.id).model_dump() == r.model_dump()
    client.responses.delete(r.id)
    for call in (client.responses.retrieve, client.responses.delete, client.responses.input_items.list):
        with pytest.raises(openai.NotFoundError):
            call(r.id)
    unstored = client.responses.create(model=model, input="Hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_background_poll_and_cancel(server, client, model):
    queued = client.responses.create(model=model, input="Say hi.", max_output_tokens=4, background=True)
    assert queued.status == "queued" and queued.background
    deadline = time.monotonic() + 120
    while (polled := client.responses.retrieve(queued.id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert polled.status in ("completed", "incomplete") and polled.output_text
    long = client.responses.create(
        model=model, input="Write a long story.", max_output_tokens=1500, background=True
    )
    cancelled = client.responses.cancel(long.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(long.id).status == "cancelled"
    assert _running(server) == 0  # the engine request was aborted, not left generating
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_unknown")
    plain = client.responses.create(model=model, input="Hi", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(plain.id)


def test_background_stream_and_replay(server, client, model):
    events = list(client.responses.create(model=model, input="Say hi.", max_output_tokens=6, background=True,
                                          stream=True))  # fmt: skip
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(numbers))) and events[-1].type in (
        "response.completed",
        "response.incomplete",
    )
    response_id = events[0].response.id
    replay = httpx.get(f"{server.url}/v1/responses/{response_id}", params={"stream": "true", "starting_after": 2},
                       timeout=60)  # fmt: skip
    replayed = [json.loads(line[6:]) for line in replay.text.splitlines() if line.startswith("data: ")]
    assert [e["sequence_number"] for e in replayed] == numbers[3:]
    assert client.responses.retrieve(response_id).status == events[-1].response.status
    plain = client.responses.create(model=model, input="Hi", max_output_tokens=2)
    refused = httpx.get(f"{server.url}/v1/responses/{plain.id}", params={"stream": "true"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "stream"


@pytest.mark.parametrize(
    "fields, status, param",
    [
        ({"previous_response_id": "resp_unknown"}, 404, "response_id"),
        ({"tools": [{"type": "web_search"}]}, 400, "tools"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, 400, "tool_choice"),
        (
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nonsense"}}}},
            400,
            None,
        ),
        (
            {"input": [{"type": "message", "role": "user", "content": [{"type": "input_image"}]}]},
            400,
            "input",
        ),
        ({"input": [{"type": "function_call", "call_id": 3}]}, 400, "input"),
        ({"temperature": 5}, 400, "temperature"),
        ({"background": True, "store": False}, 400, "store"),
    ],
)
def test_bad_input_is_an_openai_error(server, model, fields, status, param):
    body = {"model": model, "input": "Hi", "max_output_tokens": 2, **fields}
    with server.http(timeout=120) as http:
        answer = http.post("/v1/responses", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["message"] and (param is None or error["param"] == param)


def test_conversation_survives_a_restart(server, store_url, model):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=180)
    first = client.responses.create(model=model, input="My favourite colour is teal.", max_output_tokens=3)
    running = client.responses.create(
        model=model, input="Tell a long story.", max_output_tokens=1500, background=True
    )
    server.stop()
    again = _start(store_url)
    try:
        client = openai.OpenAI(base_url=again.url + "/v1", api_key="unused", max_retries=0, timeout=180)
        assert client.responses.retrieve(first.id).output_text == first.output_text
        assert client.responses.retrieve(running.id).status == "cancelled"  # not left "in_progress"
        follow = client.responses.create(
            model=model,
            input="What is my favourite colour?",
            previous_response_id=first.id,
            max_output_tokens=3,
        )
        assert follow.usage.input_tokens > first.usage.input_tokens
    finally:
        again.stop()


# --- without a server -----------------------------------------------------------------------------


def test_items_become_chat_messages():
    items = normalize_input([
        {"role": "user", "content": "Weather?"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "look it up"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
    ])  # fmt: skip
    assert all(item["id"] for item in items)
    messages = to_messages(items, "sys")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "system"]
    assistant = messages[2]
    assert assistant["reasoning_content"] == "look it up"
    assert [c["id"] for c in assistant["tool_calls"]] == ["c1", "c2"]
    assert assistant["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_store_keeps_the_newest(kind, tmp_path):
    def make():
        return MemoryStore(2) if kind == "memory" else SQLiteStore(tmp_path / "s.sqlite", 2)

    store = make()
    for i in range(3):
        store.put(StoredResponse({"id": f"r{i}", "output": [{"type": "message"}]}, [{"id": f"i{i}"}], []))
    with pytest.raises(ResponseNotFoundError):
        store.get("r0")
    assert store.get("r2").conversation() == [{"id": "i2"}, {"type": "message"}]
    store.delete("r1")
    with pytest.raises(ResponseNotFoundError):
        store.delete("r1")
    if kind == "sqlite":
        store.close()
        store = make()
        assert store.get("r2").input == [{"id": "i2"}]
    store.close()


class _FakeStream:
    """Engine outputs of one choice, one text piece each."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    async def __aiter__(self):
        for i, text in enumerate(self.pieces):
            reason = "stop" if i == len(self.pieces) - 1 else None
            yield RequestOutput(
                "r", [1], [CompletionOutput(0, text, [1], finish_reason=reason)], reason is not None
            )

    async def aclose(self) -> None:
        pass


async def test_reasoning_is_streamed_as_its_own_item():
    from llmserve.parsers.reasoning.think import Qwen3ReasoningParser

    pipeline = ParserPipeline(Qwen3ReasoningParser(None), None, tool_choice="none")
    shell = ResponseShell(ResponseRequest(input="x"), "m", "auto")
    writer = EventWriter(shell, pipeline, None, input_tokens=3)
    ctx = SimpleNamespace(tokenize=lambda model, text, add_special_tokens: text.split())
    stored = []
    pieces = ["<think>", "let me ", "think</think>", "The answer", " is 4."]
    raw = [event async for event in writer.events(_FakeStream(pieces), stored.append, ctx, None)]
    events = [
        TypeAdapter(ResponseStreamEvent).validate_python(json.loads(e.split("data: ", 1)[1])) for e in raw
    ]
    types = [e.type for e in events]
    assert types[2:4] == ["response.output_item.added", "response.reasoning_text.delta"]
    first_message = types.index("response.content_part.added")
    assert types[first_message - 3 : first_message] == [
        "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_item.added",
    ]
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert (reasoning.strip(), text) == ("let me think", "The answer is 4.")
    final = events[-1].response
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].summary[0].text.strip() == "let me think"
    assert final.usage.output_tokens_details.reasoning_tokens == 3 and final.usage.output_tokens == 5
    assert stored[0]["id"] == final.id
