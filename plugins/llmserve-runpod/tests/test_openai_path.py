"""With the pack installed, ``llmserve serve`` answers under /openai/v1 as under /v1."""

from __future__ import annotations

import httpx
import openai


def test_openai_sdk_on_the_runpod_path(server):
    client = openai.OpenAI(base_url=server + "/openai/v1", api_key="unused", max_retries=0, timeout=60)
    assert client.models.list().data[0].id == "smol"
    chat = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert chat.choices[0].message.content and chat.usage.completion_tokens <= 3
    stream = client.completions.create(model="smol", prompt="Hello", max_tokens=3, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices)


def test_errors_keep_each_protocols_shape(server):
    bad = httpx.post(server + "/openai/v1/messages", json={"model": "smol", "messages": []})
    assert bad.status_code == 400 and bad.json()["type"] == "error"  # Anthropic's shape, as on /v1/messages
    missing = httpx.get(server + "/openai/v1/nothing-here")
    assert missing.status_code == 404 and "error" in missing.json()
    assert httpx.get(server + "/openai/health").status_code == 404  # only /openai/v1 is mapped
