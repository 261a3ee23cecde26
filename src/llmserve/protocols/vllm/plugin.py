"""The built-in ``vllm`` protocol plugin: vLLM's own routes, registered like any third party's.

- ``vllm`` (always mounted): /health, /ping, /version, /load, /is_sleeping, /sleep, /wake_up,
  /tokenize, /detokenize, /metrics, /classify, /openapi.json, /docs.
- ``vllm-generate`` (needs a generation model): /generate and the render routes.
- ``vllm-pooling`` (needs an embedding model): /pooling, /score, /rerank and Cohere's /v2/rerank
  and /v2/embed.
"""

from __future__ import annotations

from quart import Blueprint

from llmserve import hookimpl


def make_blueprint() -> Blueprint:
    from llmserve.protocols.vllm import docs, health, metrics_route, pooling, tokenize

    parent = Blueprint("vllm", __name__)
    for child in (health.bp, tokenize.bp, metrics_route.bp, pooling.classify_bp, docs.bp):
        parent.register_blueprint(child)
    return parent


def make_generate_blueprint() -> Blueprint:
    from llmserve.protocols.vllm import generate, render

    parent = Blueprint("vllm_generate_routes", __name__)
    for child in (generate.bp, render.bp):
        parent.register_blueprint(child)
    return parent


def make_pooling_blueprint() -> Blueprint:
    from llmserve.protocols.vllm import cohere, pooling

    parent = Blueprint("vllm_pooling_routes", __name__)
    for child in (pooling.bp, cohere.bp):
        parent.register_blueprint(child)
    return parent


@hookimpl
def llmserve_protocols(register) -> None:
    register("vllm", make_blueprint, capabilities=frozenset())
    register("vllm-generate", make_generate_blueprint, capabilities=frozenset({"generate"}))
    register("vllm-pooling", make_pooling_blueprint, capabilities=frozenset({"embed"}))
