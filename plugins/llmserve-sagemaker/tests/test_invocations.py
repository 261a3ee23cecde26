"""/invocations and /ping of a real server with the pack installed."""

from __future__ import annotations

import json

import httpx
import pytest


def invoke(url: str, body, **kwargs) -> httpx.Response:
    return httpx.post(url + "/invocations", json=body, timeout=120, **kwargs)


def test_the_body_picks_the_route(sagemaker_server):
    chat = invoke(sagemaker_server, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
    assert chat.status_code == 200, chat.text
    assert chat.json()["object"] == "chat.completion" and chat.json()["model"] == "sm-chat"
    completion = invoke(sagemaker_server, {"prompt": "Hi", "max_tokens": 3})
    assert completion.status_code == 200 and completion.json()["object"] == "text_completion"
    assert completion.json()["usage"]["completion_tokens"] == 3
    embedding = invoke(sagemaker_server, {"input": ["Hi", "there"]})
    assert embedding.status_code == 200 and len(embedding.json()["data"]) == 2
    assert len(embedding.json()["data"][0]["embedding"]) == 384
    score = invoke(sagemaker_server, {"text_1": "a cat", "text_2": ["a kitten", "a tax form"]})
    assert score.status_code == 200, score.text
    first, second = (d["score"] for d in score.json()["data"])
    assert first > second
    rerank = invoke(sagemaker_server, {"query": "a cat", "documents": ["a tax form", "a kitten"]})
    assert rerank.status_code == 200 and rerank.json()["results"][0]["index"] == 1


def test_a_body_with_both_chat_and_prompt_is_chat_first(sagemaker_server):
    both = invoke(
        sagemaker_server, {"messages": [{"role": "user", "content": "Hi"}], "prompt": "x", "max_tokens": 2}
    )
    assert both.status_code == 200 and both.json()["object"] == "chat.completion"


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": "Count to five."}], "max_tokens": 8, "stream": True},
        {"prompt": "Once upon a time", "max_tokens": 8, "stream": True},
    ],
    ids=["chat", "completion"],
)
def test_streams_when_asked(sagemaker_server, body):
    with httpx.stream("POST", sagemaker_server + "/invocations", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 2
    expected = "chat.completion.chunk" if "messages" in body else "text_completion"
    assert all(chunk["object"] == expected for chunk in chunks)


def test_a_body_no_route_takes_is_a_400_naming_the_candidates(sagemaker_server):
    bad = invoke(sagemaker_server, {"nothing": 1})
    assert bad.status_code == 400
    message = bad.json()["error"]["message"]
    assert message.startswith(
        "Cannot find suitable handler for request. Expected one of: ChatCompletionRequest"
    )
    assert "RerankRequest" in message and "PoolingRequest" in message
    near = invoke(sagemaker_server, {"messages": "not a list", "max_tokens": 3})
    assert near.status_code == 400 and "as ChatCompletionRequest, messages" in near.json()["error"]["message"]
    for raw in (b"{not json", b"[1, 2]", b'{"prompt": NaN}'):
        response = httpx.post(sagemaker_server + "/invocations", content=raw, timeout=30)
        assert response.status_code == 400 and response.json()["error"]["message"]


def test_the_chosen_route_keeps_its_own_errors(sagemaker_server):
    too_long = invoke(sagemaker_server, {"prompt": "word " * 600, "max_tokens": 3})
    assert too_long.status_code == 400 and "context length" in too_long.json()["error"]["message"]
    unknown = invoke(sagemaker_server, {"prompt": "Hi", "model": "nope"})
    assert unknown.status_code == 404


def test_ping_and_openapi(sagemaker_server):
    assert httpx.get(sagemaker_server + "/ping").status_code == 200
    assert httpx.post(sagemaker_server + "/ping").status_code == 200
    operation = httpx.get(sagemaker_server + "/openapi.json").json()["paths"]["/invocations"]["post"]
    assert operation["tags"] == ["sagemaker"] and "requestBody" in operation


def test_routes_not_served_get_a_clear_4xx(chat_only_server):
    classify = invoke(chat_only_server, {"input": "Hi"})  # no embedding model: classify is next
    assert classify.status_code == 400 and "classification" in classify.json()["error"]["message"].lower()
    rerank = invoke(chat_only_server, {"query": "a", "documents": ["b"]})
    assert rerank.status_code == 400
    message = rerank.json()["error"]["message"]
    assert "Not served here" in message and "rerank" in message and "embeddings" in message


def test_ping_is_503_once_the_engine_died(chat_only_server):
    assert httpx.get(chat_only_server + "/ping").status_code == 200
    fatal = invoke(chat_only_server, {"prompt": "Hi", "max_tokens": 2, "seed": 666})
    assert fatal.status_code >= 500
    assert httpx.get(chat_only_server + "/ping").status_code == 503
    after = invoke(chat_only_server, {"prompt": "Hi", "max_tokens": 2})
    assert after.status_code == 503
