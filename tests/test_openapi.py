"""/openapi.json is built in core from what each protocol declares: every mounted route is listed,
POST bodies and JSON answers carry their schemas, and every reference resolves."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

from pydantic import BaseModel
from quart import Blueprint

from llmserve.api import document, hookimpl
from llmserve.config import build_config
from llmserve.plugins import Plugins
from llmserve.server.app import create_app
from llmserve.server.context import ProtocolContext
from llmserve.server.registry import ModelRegistry, ServedModel

# Routes that take no JSON body or answer with no JSON (probes, sleep controls, the docs and UI pages).
NO_REQUEST_BODY = {"/ping", "/sleep", "/wake_up"}
NO_JSON_ANSWER = {"/", "/health", "/ping", "/metrics", "/docs", "/openapi.json", "/sleep", "/wake_up"}
NO_JSON_ANSWER |= {"/classify"}  # always a 400: no classification model is served
NO_JSON_ANSWER |= {"/v1/realtime"}  # a WebSocket upgrade


class EchoIn(BaseModel):
    text: str


class EchoOut(BaseModel):
    echoed: str


class _Pack:
    @hookimpl
    def llmserve_protocols(self, register):
        bp = Blueprint("echo_pack", __name__)

        @bp.post("/echo")
        @document("Echo a text.", request=EchoIn, response=EchoOut, tags=["echo"])
        async def echo():
            return {"echoed": "x"}

        register("echo", bp, capabilities=frozenset())


def _app(**config):
    config = build_config(**config)
    plugins = Plugins({}).load([("echo", _Pack())])
    models = ModelRegistry(
        [
            ServedModel("chat", "/m", "generate", None, 64, engine=SimpleNamespace(is_dead=False)),
            ServedModel("emb", "/e", "embed", None, 64, embedder=SimpleNamespace(dim=384)),
            ServedModel("stt", "/s", "transcribe", None, 224, transcriber=SimpleNamespace()),
        ]
    )
    return create_app(config, ProtocolContext(config, plugins, models), plugins)


def _mounted(app) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.endswith("static"):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        out |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return out


async def test_every_mounted_route_is_declared_with_its_schemas():
    app = _app(enable_sleep_mode=True)
    spec = await (await app.test_client().get("/openapi.json")).get_json()
    listed = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert _mounted(app) == listed
    for path, method in sorted(listed):
        op = spec["paths"][path][method]
        assert op.get("summary") and op.get("tags"), (path, method)
        if method == "post" and path not in NO_REQUEST_BODY:
            assert "requestBody" in op, path
        if path not in NO_JSON_ANSWER:
            assert "content" in op["responses"]["200"], (path, method)
    echo = spec["paths"]["/echo"]["post"]
    assert echo["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EchoIn"
    }
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(spec)))
    assert (
        {"EchoIn", "EchoOut", "ChatCompletionRequest", "CompletionResponse"}
        <= refs
        <= set(spec["components"]["schemas"])
    )


async def test_sleep_routes_need_the_flag():
    paths = (await (await _app().test_client().get("/openapi.json")).get_json())["paths"]
    assert "/sleep" not in paths and "/wake_up" not in paths and "/is_sleeping" not in paths
    client = _app().test_client()
    assert (await client.post("/sleep")).status_code == 404


async def test_the_served_document_states_the_servers_bounds():
    spec = await (await _app(max_n=3).test_client().get("/openapi.json")).get_json()
    schemas = spec["components"]["schemas"]

    def prop(schema, name, kind=None):
        found = schemas[schema]["properties"][name]
        return next((b for b in found.get("anyOf", []) if b.get("type") == kind), found) if kind else found

    # the served names (unknown ones are a 404), the embedding size, the flags' caps
    assert prop("ChatCompletionRequest", "model", "string")["enum"] == ["chat", "emb", "stt", "default", ""]
    assert prop("MessagesRequest", "model")["enum"] == ["chat", "emb", "stt", "default", ""]
    assert "enum" not in prop("ChatCompletionResponse", "model")  # answers are not requests
    assert prop("EmbeddingRequest", "dimensions", "integer")["enum"] == [384]
    assert prop("CohereEmbedRequest", "output_dimension", "integer")["enum"] == [384]
    assert prop("GenerateRequest", "n", "integer") == {"type": "integer", "minimum": 1, "maximum": 3}
    assert prop("CompletionRenderRequest", "max_tokens", "integer")["maximum"] == 64
    # Anthropic's max_tokens is a ceiling (cut to what fits), not refused past the context
    assert "maximum" not in prop("MessagesRequest", "max_tokens")
    # vLLM's own routes carry the OpenAI models' bounds
    assert prop("ChatRenderRequest", "temperature", "number") == {"type": "number", "minimum": 0}
    assert prop("ChatRenderRequest", "messages")["items"]["properties"]["role"] == {
        "type": "string",
        "minLength": 1,
    }
    assert schemas["GenerateRequest"]["oneOf"][0]["required"] == ["prompt"]
    # no image or document blocks: no served model takes them
    assert "ImageBlock" not in json.dumps(schemas["Message"]) and "TextBlock" in json.dumps(
        schemas["Message"]
    )
    streamed = spec["paths"]["/generate"]["post"]["responses"]["200"]["content"]
    assert {"application/json", "application/x-ndjson", "text/event-stream"} == set(streamed)
    include = prop("ResponseRequest", "include")["items"]["enum"]
    assert include == ["message.output_text.logprobs", "reasoning.encrypted_content"]
