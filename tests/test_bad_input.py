"""Bad input through the real server: each is a 4xx in the protocol's error shape naming the
field, and none leaves the engine busy or holding KV blocks."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
COMPLETION = {"prompt": "Hi", "max_tokens": 2}
TEN_MB = "a " * 5_000_000
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=120) as client:
        yield client


def openai_error(response: httpx.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def raw(http: httpx.Client, path: str, content: bytes | str) -> httpx.Response:
    return http.post(path, content=content, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"prompt": "Hi",', "not valid JSON"),
        (b'{"prompt": "\xff\xfe"}', "not valid JSON"),  # invalid UTF-8
        ('{"prompt": "Hi", "temperature": NaN}', "NaN"),
        ('{"prompt": "Hi", "temperature": Infinity}', "Infinity"),
        ('{"prompt": "Hi", "temperature": -Infinity}', "Infinity"),
        ('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested more than 64"),
        ('{"prompt": "Hi", "x": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}", "nested more than 64"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"])
def test_malformed_bodies_are_400(http, path, content, says):
    assert says in openai_error(raw(http, path, content))["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {**COMPLETION, "max_tokens": "many"}, "max_tokens"),
        ("/v1/completions", {**COMPLETION, "max_tokens": 10**30}, "max_tokens"),  # past the context
        ("/v1/completions", {**COMPLETION, "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {**COMPLETION, "max_tokens": -1}, "max_tokens"),
        ("/v1/completions", {**COMPLETION, "temperature": -0.5}, "temperature"),
        ("/v1/completions", {**COMPLETION, "top_p": 0}, "top_p"),
        ("/v1/completions", {**COMPLETION, "seed": 2**70}, "seed"),
        ("/v1/completions", {**COMPLETION, "n": 0}, "n"),
        ("/v1/completions", {**COMPLETION, "n": 10_000}, "n"),
        ("/v1/completions", {**COMPLETION, "logprobs": 10_000}, "logprobs"),
        ("/v1/completions", {**COMPLETION, "prompt_logprobs": 10_000}, "prompt_logprobs"),
        ("/v1/completions", {**COMPLETION, "stop": [f"s{i}" for i in range(10_000)]}, "stop"),
        ("/v1/completions", {**COMPLETION, "stop_token_ids": list(range(10_000))}, "stop_token_ids"),
        ("/v1/completions", {**COMPLETION, "prompt": [49152]}, "prompt"),  # vocabulary is 49152
        ("/v1/completions", {**COMPLETION, "prompt": [-1]}, "prompt"),
        ("/v1/completions", {**COMPLETION, "logit_bias": {str(10**20): 1}}, "logit_bias"),
        ("/v1/completions", {**COMPLETION, "prompt": TEN_MB}, "prompt"),
        ("/v1/chat/completions", {**CHAT, "n": 0}, "n"),  # was an IndexError (500)
        ("/v1/chat/completions", {**CHAT, "n": 10_000}, "n"),
        ("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 10_000}, "top_logprobs"),
        ("/v1/chat/completions", {**CHAT, "stop": [f"s{i}" for i in range(10_000)]}, "stop"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 100_000}, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "max_completion_tokens": -5}, "max_completion_tokens"),
        ("/v1/chat/completions", {**CHAT, "messages": []}, "messages"),
        ("/v1/chat/completions", {**CHAT, "messages": "Hi"}, "messages"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [IMAGE]}]}, "messages"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": TEN_MB}]}, "messages"),
        ("/v1/embeddings", {"input": [[10**9]]}, "input"),  # was an IndexError (500) in the encoder
        ("/v1/embeddings", {"input": TEN_MB}, "input"),
        ("/v1/embeddings", {"input": []}, "input"),
        ("/v1/embeddings", {"input": "x", "dimensions": 10**30}, "dimensions"),
        ("/detokenize", {"tokens": [10**12]}, "tokens"),
    ],
)
def test_bad_fields_are_400_naming_the_field(http, path, body, param):
    assert openai_error(http.post(path, json=body))["param"] == param


def test_responses_image_and_caps_name_the_field(http):
    image = {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]}
    assert openai_error(http.post("/v1/responses", json=image))["param"] == "input"
    assert openai_error(http.post("/v1/responses", json={"input": "Hi", "max_output_tokens": 0}))[
        "param"
    ] == ("max_output_tokens")


def test_anthropic_image_and_bad_fields_are_its_400(server):
    client = anthropic.Anthropic(base_url=server, api_key="x", max_retries=0)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    for kwargs in (
        {"messages": [{"role": "user", "content": [image]}]},
        {"messages": []},
        {"messages": [{"role": "user", "content": "Hi"}], "stop_sequences": [f"s{i}" for i in range(10_000)]},
    ):
        with pytest.raises(anthropic.BadRequestError) as info:
            client.messages.create(model="HuggingFaceTB/SmolLM2-135M-Instruct", max_tokens=2, **kwargs)
        assert (
            info.value.body["type"] == "error" and info.value.body["error"]["type"] == "invalid_request_error"
        )


def test_openai_sdk_sees_bad_request_errors(client, model):
    with pytest.raises(openai.BadRequestError, match="at most 128"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], n=10_000)
    with pytest.raises(openai.BadRequestError, match="at most 20"):
        client.completions.create(model=model, prompt="Hi", max_tokens=1, logprobs=10_000)
    with pytest.raises(openai.BadRequestError, match="not multimodal"):
        client.chat.completions.create(
            model=model, max_tokens=1, messages=[{"role": "user", "content": [IMAGE]}]
        )


def test_after_bad_input_nothing_runs_and_every_block_is_free(http):
    deadline = time.monotonic() + 30
    while True:
        status = http.get("/v1/status").json()
        if (
            status["num_running"] == status["num_waiting"] == 0
            and status["memory"]["kv_cache_used_bytes"] == 0
        ):
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert http.get("/health").status_code == 200
    out = http.post("/v1/completions", json={**COMPLETION, "temperature": 0}).json()
    assert out["choices"][0]["finish_reason"] == "length"


def _quick(http: httpx.Client, path: str, body: dict) -> httpx.Response:
    """The answer, which must come in well under the ~20 s tokenizing 10 MB takes here."""
    start = time.monotonic()
    response = http.post(path, json=body)
    assert time.monotonic() - start < 10, f"{path} took {time.monotonic() - start:.1f} s"
    return response


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {"prompt": TEN_MB}, "prompt"),
        ("/tokenize", {"messages": [{"role": "user", "content": TEN_MB}]}, "messages"),
        ("/detokenize", {"tokens": [1] * 700_000}, "tokens"),  # past 2 x 162 x 2048 ids
        ("/generate", {"prompt": TEN_MB}, "prompt"),
        ("/v1/completions/render", {"prompt": TEN_MB}, "prompt"),
        ("/pooling", {"input": TEN_MB}, "input"),
        ("/v1/score", {"text_1": "Hi", "text_2": TEN_MB}, "text_2"),
    ],
)
def test_huge_texts_are_refused_before_tokenizing(http, path, body, param):
    assert openai_error(_quick(http, path, body))["param"] == param


def test_truncating_requests_tokenize_only_the_kept_end(http):
    """truncate_prompt_tokens with a 10 MB text: only its end is tokenized, and the ids kept are
    those of the whole text's end."""
    short = http.post("/tokenize", json={"prompt": "a " * 1000}).json()["tokens"]
    rendered = _quick(http, "/v1/completions/render", {"prompt": TEN_MB, "truncate_prompt_tokens": 8})
    assert rendered.status_code == 200, rendered.text[:300]
    assert rendered.json()[0]["token_ids"] == short[-8:]
    done = _quick(http, "/v1/completions", {**COMPLETION, "prompt": TEN_MB, "truncate_prompt_tokens": 8})
    assert done.status_code == 200 and done.json()["usage"]["prompt_tokens"] == 8
    embedded = _quick(http, "/v1/embeddings", {"input": TEN_MB, "truncate_prompt_tokens": -1})
    assert embedded.status_code == 200 and embedded.json()["usage"]["prompt_tokens"] == 512
    ranked = _quick(http, "/v2/rerank", {"query": "a", "documents": [TEN_MB, "b"]})  # Cohere truncates
    assert ranked.status_code == 200 and len(ranked.json()["results"]) == 2


@pytest.mark.parametrize(
    ("path", "body", "param", "says"),
    [
        ("/v1/completions", {**COMPLETION, "prompt": [1] * 3_000_000}, "prompt", "3000000 in the prompt"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "Hi " * 3000}]},
         "messages", "in the messages"),
        ("/v1/chat/completions/render", {"messages": [{"role": "user", "content": "Hi " * 3000}]},
         "messages", "in the messages"),
        ("/generate", {"prompt_token_ids": [1] * 3000}, "prompt_token_ids", "in the prompt_token_ids"),
        ("/v1/responses", {"input": "Hi " * 3000}, "input", "in the input"),
    ],
)  # fmt: skip
def test_prompts_past_the_context_name_their_field(http, path, body, param, says):
    error = openai_error(http.post(path, json=body))
    assert error["param"] == param and says in error["message"] and "2048" in error["message"], error


@pytest.mark.parametrize("path", ["/tokenize", "/v1/chat/completions/render", "/v1/chat/completions"])
def test_a_content_part_type_that_is_no_string_is_400(http, path):
    # an object as `type` was a TypeError (unhashable), a 500; found by nox -s fuzz
    body = {**CHAT, "messages": [{"role": "user", "content": [{"type": {"a": 1}, "text": "Hi"}]}]}
    assert openai_error(http.post(path, json=body))["param"] == "messages"


@pytest.mark.parametrize(("thinking", "signature"), [("Hm", "é"), ("\ud800", "x"), ("Hm", "\udc00")])
def test_anthropic_thinking_signature_of_any_text_is_a_400(http, thinking, signature):
    # a non-ASCII signature was a TypeError in hmac.compare_digest, a lone surrogate a
    # UnicodeEncodeError: 500s, found by the fuzz run
    block = {"type": "thinking", "thinking": thinking, "signature": signature}
    body = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "max_tokens": 2,
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [block]},
                         {"role": "user", "content": "Go on"}]}  # fmt: skip
    response = http.post(
        "/v1/messages", content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "signature" in response.json()["error"]["message"]
