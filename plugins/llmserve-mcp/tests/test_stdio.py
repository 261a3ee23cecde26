"""`llmserve mcp` over stdio, spawned by the SDK's own client as a desktop client would."""

from __future__ import annotations

import os
import subprocess
import sys

from mcp import Client, StdioServerParameters


def _params(*args: str) -> StdioServerParameters:
    env = {**os.environ, "LLMSERVE_KV_CACHE_SPACE": "1"}
    return StdioServerParameters(command=sys.executable, args=["-m", "llmserve", "mcp", *args], env=env)


async def test_stdio_serves_the_tools():
    async with Client(_params("--max-model-len", "512"), read_timeout_seconds=240) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        models = (await client.call_tool("list_models", {})).structured_content["models"]
        chat = await client.call_tool(
            "chat",
            {"messages": [{"role": "user", "content": "Say hello."}], "system_prompt": "Be brief.",
             "max_tokens": 6, "temperature": 0},
        )  # fmt: skip
        again = await client.call_tool(
            "chat",
            {"messages": [{"role": "user", "content": "Say hello."}], "system_prompt": "Be brief.",
             "max_tokens": 6, "temperature": 0},
        )  # fmt: skip
        embedded = await client.call_tool("get_embeddings", {"input": ["one", "two"]})
        metrics = (await client.call_tool("monitor_metrics", {})).structured_content["models"][0]
    assert names == {"generate_completion", "chat", "get_embeddings", "list_models", "monitor_metrics"}
    assert [m["kind"] for m in models] == ["generate", "embed"] and models[0]["max_model_len"] == 512
    assert not chat.is_error and chat.structured_content["content"].strip()
    assert chat.structured_content["content"] == again.structured_content["content"]  # greedy
    assert chat.structured_content["usage"]["completion_tokens"] <= 6
    assert (
        len(embedded.structured_content["embeddings"]) == 2
        and embedded.structured_content["dimensions"] == 384
    )
    assert metrics["requests_finished"] == 2
    assert metrics["generation_tokens_total"] == 2 * chat.structured_content["usage"]["completion_tokens"]


def test_http_flags_are_refused():
    result = subprocess.run(
        [sys.executable, "-m", "llmserve", "mcp", "--port", "9000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--port: not used by `llmserve mcp`" in result.stderr
    assert result.stdout == ""
