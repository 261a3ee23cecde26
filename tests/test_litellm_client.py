"""A real third-party client: LiteLLM's ``hosted_vllm/`` and ``openai/`` providers against the
real server (completion, streaming, a tool call, embeddings)."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network: the bundled cost map
litellm = pytest.importorskip("litellm")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
HI = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def names(client):
    ids = [m.id for m in client.models.list().data]
    return ids[0], ids[-1]  # (chat model, embedding model)


@pytest.mark.parametrize("provider", ["hosted_vllm", "openai"])
def test_completion_and_streaming(server, names, provider):
    model = f"{provider}/{names[0]}"
    out = litellm.completion(
        model=model, api_base=server + "/v1", api_key="unused", messages=HI, max_tokens=8
    )
    assert out.choices[0].message.content and out.usage.completion_tokens <= 8
    chunks = list(
        litellm.completion(
            model=model,
            api_base=server + "/v1",
            api_key="unused",
            messages=HI,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and text.strip() == out.choices[0].message.content.strip() or len(chunks) > 1


def test_tool_call(server, names):
    out = litellm.completion(
        model=f"hosted_vllm/{names[0]}", api_base=server + "/v1", api_key="unused",
        messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=40, temperature=0,
    )  # fmt: skip
    call = out.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(
        json.loads(call.function.arguments)["city"], str
    )


def test_embeddings(server, names):
    out = litellm.embedding(model=f"openai/{names[1]}", api_base=server + "/v1", api_key="unused",
                            input=["a cat", "a dog"])  # fmt: skip
    assert len(out.data) == 2 and len(out.data[0]["embedding"]) == 384
