"""Security: the API key (constant-time comparison, never logged), chat templates in Jinja's
sandbox (known template-injection payloads through a --chat-template file and trusted request
templates), no client-given model paths, exposure of /metrics and /docs, the per-request caps."""

from __future__ import annotations

import hmac
from pathlib import Path

import httpx
import openai
import pytest
from conftest import ServerProcess

from llmserve.config import build_config
from llmserve.server.app import create_app

KEY = "sk-test-7f3a9c1e5b"
TEMPLATE = Path(__file__).parent / "fixtures" / "ssti_template.jinja"
PAYLOADS = ["subclasses", "globals", "context", "raise_exception", "format"]
REQUEST_PAYLOADS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ joiner.__init__.__globals__.__builtins__.open('MARKER', 'w') }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{{ (messages|attr('__class__')).__mro__ }}",
    "{% set x = namespace() %}{{ x.__init__.__globals__ }}",
]


@pytest.fixture(scope="module")
def secured(smollm2_dir, minilm_dir):
    proc = ServerProcess(
        "--max-model-len", "512", "--api-key", KEY, "--chat-template", str(TEMPLATE),
        "--trust-request-chat-template", "--enable-log-requests", "--max-n", "2", "--max-logprobs", "3",
        "--max-stop", "2", "--open-paths", "/health", "--disable-fastapi-docs",
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def sdk(secured):
    return openai.OpenAI(base_url=secured.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def chat(sdk, **extra):
    return sdk.chat.completions.create(
        model="HuggingFaceTB/SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Hi"}],
        max_tokens=2, **extra,
    )  # fmt: skip


def test_the_file_template_works(sdk):
    assert chat(sdk).choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("payload", PAYLOADS)
def test_template_injection_through_the_template_file_is_refused(sdk, payload, tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(openai.BadRequestError) as info:
        chat(sdk, extra_body={"chat_template_kwargs": {"ssti": payload, "marker": str(marker)}})
    assert "chat template" in info.value.message
    assert "<class" not in info.value.message and "__builtins__" not in info.value.message
    assert not marker.exists()


@pytest.mark.parametrize("payload", REQUEST_PAYLOADS)
def test_template_injection_through_a_trusted_request_template_is_refused(sdk, payload, tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(openai.BadRequestError) as info:
        chat(sdk, extra_body={"chat_template": payload.replace("MARKER", str(marker))})
    assert "<class" not in info.value.message
    assert not marker.exists()


def test_api_key_is_required_and_never_logged(secured):
    with secured.http(timeout=30) as http:
        assert http.get("/v1/models").status_code == 401
        assert http.get("/v1/models", headers={"Authorization": "Bearer sk-wrong-key-123"}).status_code == 401
        body = {"prompt": "Hi", "max_tokens": 1}
        ok = http.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
        assert http.post("/v1/completions", json=body, headers={"x-api-key": KEY}).status_code == 200
        # --open-paths /health: probes stay open, /metrics is behind the key; docs are off
        assert http.get("/health").status_code == 200
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"x-api-key": KEY}).status_code == 200
        assert http.get("/openapi.json", headers={"x-api-key": KEY}).status_code == 404
        assert http.get("/docs", headers={"x-api-key": KEY}).status_code == 404
        bad = http.post("/v1/completions", content=b'{"prompt": "\xff"}', headers={"x-api-key": KEY})
        assert bad.status_code == 400  # logging a body that is not UTF-8 was a 500
    log = secured.output()
    assert "request POST /v1/completions" in log  # --enable-log-requests logged the bodies
    assert KEY not in log and "sk-wrong-key-123" not in log


def test_per_request_caps_follow_the_flags(sdk):
    with pytest.raises(openai.BadRequestError, match=r"at most 2 \(--max-n\)"):
        chat(sdk, n=3)
    with pytest.raises(openai.BadRequestError, match=r"at most 3 \(--max-logprobs\)"):
        chat(sdk, logprobs=True, top_logprobs=4)
    with pytest.raises(openai.BadRequestError, match=r"at most 2 entries \(--max-stop\)"):
        chat(sdk, stop=["a", "b", "c"])
    out = chat(sdk, n=2, logprobs=True, top_logprobs=3, stop=["a", "b"])
    assert len(out.choices) == 2 and len(out.choices[0].logprobs.content[0].top_logprobs) == 3


@pytest.mark.parametrize("name", ["/etc/passwd", "../../../etc/passwd", "/root/.cache/llmserve/models", "~"])
def test_model_names_are_never_opened_as_paths(sdk, name):
    with pytest.raises(openai.NotFoundError):
        sdk.completions.create(model=name, prompt="Hi", max_tokens=1)


def test_no_route_takes_a_path_from_the_client(server):
    spec = httpx.get(server + "/openapi.json").json()
    routes = set(spec["paths"])
    assert not routes & {"/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/collective_rpc"}
    for path, operations in spec["paths"].items():
        for op in operations.values():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            ref = body.get("$ref", "").rsplit("/", 1)[-1]
            fields = spec["components"]["schemas"].get(ref, {}).get("properties", {})
            assert not [f for f in fields if "path" in f or f in ("model_dir", "lora_path")], (path, fields)


async def test_api_key_is_compared_in_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    app = create_app(build_config(api_key=KEY))
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert calls == [(b"nope", KEY.encode())]


async def test_websocket_handshakes_need_the_api_key():
    from quart import websocket
    from quart.testing import WebsocketResponseError

    app = create_app(build_config(api_key=KEY))

    @app.websocket("/v1/echo")
    async def echo():
        await websocket.send(await websocket.receive())

    async with app.test_app() as test_app:
        client = test_app.test_client()
        with pytest.raises(WebsocketResponseError) as refused:
            async with client.websocket("/v1/echo") as ws:
                await ws.send("hello")
                await ws.receive()
        assert refused.value.response.status_code == 401
        async with client.websocket("/v1/echo", headers={"Authorization": f"Bearer {KEY}"}) as ws:
            await ws.send("hello")
            assert await ws.receive() == "hello"
