"""The built-in ``vllm`` protocol plugin: vLLM's own routes, registered like any third party's.

- ``vllm`` (always mounted): /health, /ping, /version, /load, /tokenize, /detokenize, /metrics,
  /classify; with ``--enable-sleep-mode`` also /is_sleeping, /sleep and /wake_up.
- ``vllm-generate`` (needs a generation model): /generate and the render routes.
- ``vllm-pooling`` (needs an embedding model): /pooling, /score, /rerank and Cohere's /v2/rerank
  and /v2/embed.
"""

from __future__ import annotations

from quart import Blueprint

from llmserve.api import EMBED, GENERATE, ProtocolContext, hookimpl


def make_blueprint(ctx: ProtocolContext) -> Blueprint:
    from llmserve.protocols.vllm import health, metrics_route, pooling, tokenize

    parent = Blueprint("vllm", __name__)
    children = [health.bp, tokenize.bp, metrics_route.bp, pooling.classify_bp]
    if ctx.config.enable_sleep_mode:
        children.append(health.sleep_bp)
    for child in children:
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
    register("vllm-generate", make_generate_blueprint, capabilities=frozenset({GENERATE}))
    register("vllm-pooling", make_pooling_blueprint, capabilities=frozenset({EMBED}))
