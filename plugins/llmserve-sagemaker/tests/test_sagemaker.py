"""The pack installed into a real server: /invocations dispatches by body shape."""

from __future__ import annotations

import httpx


def test_invocations_dispatch(sagemaker_server):
    chat = httpx.post(
        sagemaker_server + "/invocations",
        json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
        timeout=60,
    )
    assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
    completion = httpx.post(
        sagemaker_server + "/invocations", json={"prompt": "Hi", "max_tokens": 3}, timeout=60
    )
    assert completion.status_code == 200 and completion.json()["object"] == "text_completion"
    embedding = httpx.post(sagemaker_server + "/invocations", json={"input": "Hi"}, timeout=60)
    assert embedding.status_code == 200 and len(embedding.json()["data"][0]["embedding"]) == 384
    bad = httpx.post(sagemaker_server + "/invocations", json={"nothing": 1})
    assert bad.status_code == 400 and "messages" in bad.json()["error"]["message"]
    assert httpx.get(sagemaker_server + "/ping").status_code == 200


def test_invocations_is_in_the_openapi_document(sagemaker_server):
    operation = httpx.get(sagemaker_server + "/openapi.json").json()["paths"]["/invocations"]["post"]
    assert operation["tags"] == ["sagemaker"] and "requestBody" in operation
