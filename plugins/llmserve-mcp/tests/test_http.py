"""The MCP tools at /mcp of a real server, through the SDK's own client (streamable HTTP)."""

from __future__ import annotations

import math

import httpx
import pytest
from conftest import API_KEY, Server, lan_address, mcp_client

TOOLS = {"generate_completion", "chat", "get_embeddings", "list_models", "monitor_metrics"}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # the current protocol, and the handshake one
async def test_tools_have_typed_schemas(server, mode):
    async with mcp_client(server.url, mode=mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    completion = tools["generate_completion"].input_schema
    assert completion["required"] == ["prompt"]
    assert completion["properties"]["max_tokens"]["type"] == "integer"
    assert completion["properties"]["max_tokens"]["minimum"] == 1
    chat = tools["chat"].input_schema
    assert chat["properties"]["messages"]["type"] == "array" and "system_prompt" in chat["properties"]
    for tool in tools.values():
        assert tool.description and tool.output_schema["type"] == "object"
    assert "latency" in tools["monitor_metrics"].output_schema["properties"]["models"]["items"].get(
        "$ref", ""
    ) or ("ModelMetrics" in str(tools["monitor_metrics"].output_schema))


async def test_generate_completion_is_the_engine_answer(server):
    prompt = "The capital of France is"
    async with mcp_client(server.url) as client:
        result = await client.call_tool(
            "generate_completion", {"prompt": prompt, "max_tokens": 8, "temperature": 0}
        )
    assert not result.is_error, result.content
    out = result.structured_content
    reference = httpx.post(
        server.url + "/v1/completions", headers=AUTH, timeout=120,
        json={"prompt": prompt, "max_tokens": 8, "temperature": 0},
    ).json()  # fmt: skip
    assert out["text"] == reference["choices"][0]["text"] and out["text"].strip()
    assert out["usage"]["completion_tokens"] == reference["usage"]["completion_tokens"] == 8
    assert out["finish_reason"] == "length"


async def test_chat_takes_a_system_prompt_and_turns(server):
    turns = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada!"},
        {"role": "user", "content": "What is my name?"},
    ]
    system = "You are a concise assistant."
    async with mcp_client(server.url) as client:
        result = await client.call_tool(
            "chat", {"messages": turns, "system_prompt": system, "max_tokens": 16, "temperature": 0}
        )
        longer = system + " Answer in one short sentence, and never ask a question back."
        other = await client.call_tool("chat", {"messages": turns, "system_prompt": longer, "max_tokens": 1})
    assert not result.is_error, result.content
    reference = httpx.post(
        server.url + "/v1/chat/completions", headers=AUTH, timeout=120,
        json={"messages": [{"role": "system", "content": system}, *turns], "max_tokens": 16, "temperature": 0},
    ).json()  # fmt: skip
    assert result.structured_content["content"] == reference["choices"][0]["message"]["content"]
    assert result.structured_content["usage"]["prompt_tokens"] == reference["usage"]["prompt_tokens"]
    assert (
        other.structured_content["usage"]["prompt_tokens"]
        > result.structured_content["usage"]["prompt_tokens"]
    )


async def test_get_embeddings(server):
    texts = ["a cat sat on the mat", "a kitten sat on the rug", "quarterly tax form"]
    async with mcp_client(server.url) as client:
        result = await client.call_tool("get_embeddings", {"input": texts})
        single = await client.call_tool("get_embeddings", {"input": texts[0]})
    assert not result.is_error, result.content
    vectors = result.structured_content["embeddings"]
    assert result.structured_content["dimensions"] == 384 and len(vectors) == 3
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4 for v in vectors)

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2])
    reference = httpx.post(
        server.url + "/v1/embeddings", headers=AUTH, json={"input": texts[0]}, timeout=60
    ).json()
    assert cos(single.structured_content["embeddings"][0], reference["data"][0]["embedding"]) > 0.9999


async def test_list_models(server):
    async with mcp_client(server.url) as client:
        models = (await client.call_tool("list_models", {})).structured_content["models"]
    served = {m["id"] for m in httpx.get(server.url + "/v1/models", headers=AUTH).json()["data"]}
    assert {m["id"] for m in models} == served
    assert [m["kind"] for m in models] == ["generate", "embed"] and models[0]["max_model_len"] == 1024


async def test_monitor_metrics_sees_the_work(server):
    async with mcp_client(server.url) as client:
        before = (await client.call_tool("monitor_metrics", {})).structured_content["models"][0]
        done = await client.call_tool(
            "generate_completion", {"prompt": "Count: one, two,", "max_tokens": 12, "temperature": 0}
        )
        after = (await client.call_tool("monitor_metrics", {})).structured_content
    generated = done.structured_content["usage"]["completion_tokens"]
    model = after["models"][0]
    assert model["generation_tokens_total"] - before["generation_tokens_total"] == generated
    assert model["requests_finished"] == before["requests_finished"] + 1
    assert model["generation_tokens_per_s"] > 0 and after["interval_s"] > 0
    assert model["requests_running"] == 0 and model["requests_waiting"] == 0
    assert 0.0 <= model["kv_cache_usage"] <= 1.0
    latency = model["latency"]
    assert 0 < latency["time_to_first_token_s"] <= latency["end_to_end_s"]


async def test_bad_calls_are_tool_errors_and_the_engine_carries_on(server):
    async with mcp_client(server.url) as client:
        zero = await client.call_tool("generate_completion", {"prompt": "Hi", "max_tokens": 0})
        unknown = await client.call_tool(
            "chat", {"messages": [{"role": "user", "content": "Hi"}], "model": "nope"}
        )
        too_long = await client.call_tool("generate_completion", {"prompt": "word " * 1500, "max_tokens": 4})
        wrong_kind = await client.call_tool(
            "get_embeddings", {"input": "x", "model": (await _first_name(client))}
        )
        ok = await client.call_tool("generate_completion", {"prompt": "Hi", "max_tokens": 2})
    assert zero.is_error and "greater than or equal to 1" in zero.content[0].text
    assert unknown.is_error and "does not exist" in unknown.content[0].text
    assert too_long.is_error and "400" in too_long.content[0].text
    assert wrong_kind.is_error and "does not support" in wrong_kind.content[0].text
    assert not ok.is_error
    assert httpx.get(server.url + "/health").status_code == 200


async def _first_name(client) -> str:
    return (await client.call_tool("list_models", {})).structured_content["models"][0]["id"]


def test_the_api_key_is_enforced(server):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    for auth in ({}, {"Authorization": "Bearer wrong"}):
        refused = httpx.post(server.url + "/mcp", json=body, headers={**headers, **auth})
        assert refused.status_code == 401
        assert refused.json()["jsonrpc"] == "2.0" and "API key" in refused.json()["error"]["message"]
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")


async def test_the_sdk_client_without_the_key_is_refused(server):
    with pytest.raises(BaseException) as err:
        async with mcp_client(server.url, key=None) as client:
            await client.list_tools()
    assert "Invalid or missing API key" in repr(err.value)


def test_local_clients_only_by_default(server):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {**AUTH, "Accept": "application/json, text/event-stream"}
    rebinding = httpx.post(server.url + "/mcp", json=body, headers={**headers, "Host": "attacker.example"})
    assert rebinding.status_code == 421  # the SDK's DNS rebinding protection
    address = lan_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    remote = httpx.post(f"http://{address}:{server.port}/mcp", json=body, headers=headers)
    assert remote.status_code == 403 and "local clients only" in remote.json()["error"]["message"]
    assert httpx.get(f"http://{address}:{server.port}/health").status_code == 200  # the rest is served


async def test_allow_remote_lets_other_machines_in():
    address = lan_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    proc = Server("--host", "0.0.0.0", "--embedding-model", "none", env={"LLMSERVE_MCP_ALLOW_REMOTE": "true"})
    try:
        async with mcp_client(f"http://{address}:{proc.port}", key=None) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert names == TOOLS
        assert proc.stop() < 15  # the session manager shuts down with the server
    finally:
        proc.stop()
        proc.log.close()


def test_a_bad_allow_remote_value_stops_the_start():
    with pytest.raises(RuntimeError, match="LLMSERVE_MCP_ALLOW_REMOTE: expected true or false"):
        Server("--embedding-model", "none", env={"LLMSERVE_MCP_ALLOW_REMOTE": "sometimes"})


def test_mcp_is_in_the_openapi_document(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    assert set(spec["paths"]["/mcp"]) == {"get", "post", "delete"}
