"""Error answers of the OpenAI routes: status, OpenAI's error shape, and no 500 for bad input."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from llmserve.config import build_config
from llmserve.engine.outputs import CompletionOutput, RequestOutput
from llmserve.errors import EngineDeadError
from llmserve.plugins import Plugins
from llmserve.protocols.openai import plugin as openai_plugin
from llmserve.server.app import create_app
from llmserve.server.context import ProtocolContext
from llmserve.server.registry import ModelRegistry, ServedModel

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def post(server):
    with httpx.Client(base_url=server, timeout=60) as http:

        def send(path: str, body=None, content: str | None = None) -> httpx.Response:
            if content is not None:
                return http.post(path, content=content, headers={"Content-Type": "application/json"})
            return http.post(path, json=body)

        yield send


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    return error


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"])
@pytest.mark.parametrize(
    "content", ["{not json", "[1, 2]", "", '{"prompt": "Hi", "input": "x", "temperature": NaN}']
)
def test_malformed_json_is_400(post, path, content):
    error = error_of(post(path, content=content), 400)
    assert error["type"] == "BadRequestError"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": "Hi", "temperature": "hot"}, "temperature"),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": "Hi", "top_p": 1.5}, "top_p"),
        ("/v1/completions", {"prompt": "Hi", "temperature": "nan"}, "temperature"),
        ("/v1/completions", {"prompt": {"text": "Hi"}}, "prompt"),
        ("/v1/completions", {"prompt": []}, "prompt"),
        ("/v1/completions", {"max_tokens": 2}, "prompt"),
        ("/v1/completions", {"prompt": "Hi", "logit_bias": {"x": 1}}, "logit_bias"),
        ("/v1/completions", {"prompt": "Hi", "n": 2, "best_of": 3}, "best_of"),
        ("/v1/chat/completions", {"max_tokens": 2}, "messages"),
        ("/v1/chat/completions", {"messages": [{"content": "Hi"}]}, "messages"),
        ("/v1/chat/completions", {**CHAT, "messages": []}, "messages"),
        ("/v1/chat/completions", {**CHAT, "top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {**CHAT, "tool_choice": "required"}, "tool_choice"),
        ("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_schema"}}, "response_format"),
        ("/v1/chat/completions", {**CHAT, "chat_template": "{{ 'x' }}"}, "chat_template"),
        ("/v1/embeddings", {"input": 3}, "input"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_bad_parameters_are_400_naming_the_param(post, path, body, param):
    assert error_of(post(path, body), 400)["param"] == param


def test_unknown_model_is_404(post):
    for path, body in [("/v1/completions", {"prompt": "Hi"}), ("/v1/chat/completions", CHAT)]:
        error = error_of(post(path, {**body, "model": "gpt-nope"}), 404)
        assert error["message"] == "The model `gpt-nope` does not exist." and error["type"] == "NotFoundError"


def test_missing_model_defaults_to_the_served_one(post):
    response = post("/v1/completions", {"prompt": "Hi", "max_tokens": 1})
    assert response.status_code == 200 and response.json()["model"]


def test_too_long_is_400_with_numbers_even_when_streaming(post):
    for stream in (False, True):
        error = error_of(post("/v1/completions", {"prompt": "Hi", "max_tokens": 5000, "stream": stream}), 400)
        assert "2048" in error["message"] and "5000" in error["message"]
    error = error_of(post("/v1/chat/completions", {**CHAT, "max_tokens": 4000, "stream": True}), 400)
    assert "2048" in error["message"] and "4000" in error["message"]


def test_suffix_is_400(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="suffix is not currently supported"):
        client.completions.create(model=client.models.list().data[0].id, prompt="Hi", suffix="!")


def test_unknown_content_part_is_400(post):
    body = {**CHAT, "messages": [{"role": "user", "content": [{"type": "audio", "x": 1}]}]}
    assert "unknown part type" in error_of(post("/v1/chat/completions", body), 400)["message"]


# --- an error after the stream started: a real engine cannot be made to fail on demand, so this
# one test serves the real app with an engine double that dies after its first output.


class _DyingStream:
    def __init__(self, request_id, prompt_token_ids) -> None:
        self.request_id, self.prompt_token_ids = request_id, prompt_token_ids

    async def __aiter__(self):
        yield RequestOutput(self.request_id, self.prompt_token_ids, [CompletionOutput(0, "Hel", [1])])
        raise EngineDeadError("The engine stopped after an error: boom")

    async def ready(self) -> None:  # no output constraint to wait for
        pass

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class _DyingEngine:
    is_dead = False

    def add_request(self, request_id, prompt_token_ids, params, **options):
        return _DyingStream(request_id, prompt_token_ids)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


async def test_error_mid_stream_is_an_sse_error_event(smollm2_dir):
    from transformers import AutoTokenizer

    config = build_config(model=str(smollm2_dir))
    plugins = Plugins({"LLMSERVE_PLUGINS": "openai"}).load(extra=[("openai", openai_plugin)])
    model = ServedModel("m", str(smollm2_dir), "generate", AutoTokenizer.from_pretrained(smollm2_dir), 64)
    model.engine = _DyingEngine()
    app = create_app(config, ProtocolContext(config, plugins, ModelRegistry([model])), plugins)
    client = app.test_client()
    for path, body in [("/v1/completions", {"prompt": "Hi"}), ("/v1/chat/completions", CHAT)]:
        response = await client.post(path, json={**body, "stream": True})
        assert response.status_code == 200
        events = [
            e.removeprefix("data: ") for e in (await response.get_data(as_text=True)).split("\n\n") if e
        ]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == 503 and "boom" in error["message"]
        first = json.loads(events[0])["choices"][0]
        assert first.get("text", first.get("delta", {}).get("content")) in ("Hel", "")


# --- client disconnect aborts the engine request ------------------------------------------------


def engine_load(server: str) -> tuple[float, float]:
    """(running requests, KV cache usage) from the Prometheus endpoint."""
    values = {}
    for line in httpx.get(server + "/metrics").text.splitlines():
        for name in ("num_requests_running", "kv_cache_usage_perc"):
            if line.startswith(f"llmserve:{name}{{"):
                values[name] = float(line.rsplit(" ", 1)[1])
    return values["num_requests_running"], values["kv_cache_usage_perc"]


def wait_idle(server: str) -> tuple[float, float]:
    deadline = time.monotonic() + 15
    while (load := engine_load(server)) != (0.0, 0.0) and time.monotonic() < deadline:
        time.sleep(0.1)
    return load


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": ["Hi", "Yo"], "stream": True}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "stream": True}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
    ],
)
def test_disconnect_aborts_the_engine_request(server, path, body):
    assert wait_idle(server) == (0.0, 0.0)
    body = {**body, "max_tokens": 2000, "ignore_eos": True}
    with httpx.Client(base_url=server) as http:
        try:
            with http.stream("POST", path, json=body, timeout=httpx.Timeout(60, read=1.5)) as response:
                lines = response.iter_lines()
                assert next(lines).startswith("data: ")
                # chat's first chunk (the role) may leave before the engine scheduled the request
                deadline = time.monotonic() + 10
                while (load := engine_load(server))[0] < 1 and time.monotonic() < deadline:
                    time.sleep(0.05)
                running, kv = load
                assert running >= 1 and kv > 0
        except httpx.ReadTimeout:  # the non-streaming request: give up waiting
            assert not body.get("stream")
    assert wait_idle(server) == (0.0, 0.0)
