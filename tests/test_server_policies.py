"""Cross-cutting server behaviour: API key, request ids, CORS, body limits, overload, disconnects."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import openai
import pytest
from conftest import ServerProcess

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def guarded(smollm2_dir):
    proc = ServerProcess(
        "--api-key", KEY, "--enable-request-id-headers", "--allowed-origins", '["http://ok.example"]',
        "--max-request-body-bytes", "4096", "--max-num-seqs", "2", "--embedding-model", "none",
        "--max-model-len", "512",
        env={"LLMSERVE_MAX_WAITING_REQUESTS": "1"},
    )  # fmt: skip
    try:
        yield proc.url
    finally:
        proc.stop()


def test_api_key(guarded):
    missing = httpx.post(guarded + "/v1/completions", json={"prompt": "hi", "max_tokens": 1})
    assert missing.status_code == 401
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    wrong = openai.OpenAI(base_url=guarded + "/v1", api_key="sk-wrong")
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model="HuggingFaceTB/SmolLM2-135M-Instruct", prompt="hi", max_tokens=1)
    right = openai.OpenAI(base_url=guarded + "/v1", api_key=KEY)
    assert right.completions.create(
        model="HuggingFaceTB/SmolLM2-135M-Instruct", prompt="hi", max_tokens=1
    ).choices
    assert httpx.get(guarded + "/health").status_code == 200  # probes stay open


def test_a_refused_request_with_a_body_closes_its_connection_and_says_so(guarded):
    """Its body is left unread, so the server closes the connection after the 401; the answer says
    so and a keep-alive client sends its next request on a new connection."""
    body = {"prompt": "hi " * 1000, "max_tokens": 1}  # under --max-request-body-bytes
    with httpx.Client(base_url=guarded, timeout=60) as http:
        for _ in range(20):
            refused = http.post("/v1/completions", json=body)
            assert refused.status_code == 401 and refused.headers["connection"] == "close"
        assert http.get("/health").headers.get("connection") != "close"  # no body: kept alive


def test_request_id_headers(guarded):
    headers = {"Authorization": f"Bearer {KEY}"}
    echoed = httpx.get(guarded + "/v1/models", headers={**headers, "X-Request-Id": "abc-123"})
    assert echoed.headers["X-Request-Id"] == "abc-123"
    generated = httpx.get(guarded + "/v1/models", headers=headers)
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-Id"])


def test_cors(guarded):
    ok = httpx.get(guarded + "/health", headers={"Origin": "http://ok.example"})
    assert ok.headers["Access-Control-Allow-Origin"] == "http://ok.example"
    other = httpx.get(guarded + "/health", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = httpx.options(
        guarded + "/v1/chat/completions",
        headers={"Origin": "http://ok.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"},
    )  # fmt: skip
    assert preflight.status_code == 204
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]


def test_oversized_body_is_413(guarded):
    response = httpx.post(
        guarded + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
        json={"prompt": "x" * 10_000, "max_tokens": 1},
    )  # fmt: skip
    assert response.status_code == 413
    assert response.json()["error"]["code"] == 413


def test_overload_is_503(guarded):
    async def run():
        async with httpx.AsyncClient(base_url=guarded, headers={"Authorization": f"Bearer {KEY}"}) as http:
            body = {"prompt": "Count to a hundred:", "max_tokens": 60, "ignore_eos": True}
            return await asyncio.gather(
                *(http.post("/v1/completions", json=body, timeout=120) for _ in range(6))
            )

    responses = asyncio.run(run())
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) >= 3 and 503 in statuses and set(statuses) <= {200, 503}
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.json()["error"]["code"] == 503 and "try again" in busy.json()["error"]["message"]


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else float("nan")


def test_twenty_dropped_streams_free_everything(server):
    body = {
        "prompt": "Tell me a long story about dragons.",
        "max_tokens": 1000,
        "ignore_eos": True,
        "stream": True,
    }

    async def open_and_drop():
        async with httpx.AsyncClient(base_url=server, timeout=60) as http:

            async def one():
                async with http.stream("POST", "/v1/completions", json=body) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data: "):
                            return True

            assert all(await asyncio.gather(*(one() for _ in range(20))))
            text = (await http.get("/metrics")).text
            return _metric(text, "llmserve:num_requests_running")

    running_before_drop = asyncio.run(open_and_drop())
    assert running_before_drop >= 1
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = httpx.get(server + "/metrics").text
        if (
            _metric(text, "llmserve:num_requests_running") == 0
            and _metric(text, "llmserve:kv_cache_usage_perc") == 0
        ):
            break
        time.sleep(0.2)
    assert _metric(text, "llmserve:num_requests_running") == 0
    assert _metric(text, "llmserve:num_requests_waiting") == 0
    assert _metric(text, "llmserve:kv_cache_usage_perc") == 0  # every block back in the free pool


def test_request_chat_template_needs_the_trust_flag(guarded):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "chat_template": "{{ 'x' }}"}
    response = httpx.post(
        guarded + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json=body
    )
    assert (
        response.status_code == 400 and "--trust-request-chat-template" in response.json()["error"]["message"]
    )


def test_priority_needs_the_priority_policy(guarded):
    body = {"prompt": "hi", "max_tokens": 1, "priority": 3}
    response = httpx.post(guarded + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "priority"
    body["priority"] = 0
    assert (
        httpx.post(
            guarded + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, json=body
        ).status_code
        == 200
    )


def test_sleep_routes_are_not_mounted_without_the_flag(guarded):
    headers = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(guarded + "/sleep", headers=headers).status_code == 404
    assert httpx.get(guarded + "/is_sleeping", headers=headers).status_code == 404
