"""The built-in OpenAI protocol plugin: registered through the hook like any third-party one."""

from __future__ import annotations

from quart import Blueprint

from llmserve.api import EMBED, GENERATE, document, hookimpl
from llmserve.protocols.openai import chat, completions, embeddings, models
from llmserve.protocols.openai import schemas as s

_TAGS = ["openai"]


def _route(bp: Blueprint, path: str, view, method: str, summary: str, request=None, response=None) -> None:
    view = document(summary, request=request, response=response, tags=_TAGS)(view)
    bp.add_url_rule(path, view_func=view, methods=[method])


def make_blueprint() -> Blueprint:
    """/v1/completions and /v1/chat/completions (needs a generation model)."""
    bp = Blueprint("openai", __name__)
    _route(bp, "/v1/completions", completions.create_completion, "POST",
           "Text completion; streams server-sent events with `stream: true`.",
           s.CompletionRequest, s.CompletionResponse)  # fmt: skip
    _route(bp, "/v1/chat/completions", chat.create_chat_completion, "POST",
           "Chat completion; streams server-sent events with `stream: true`.",
           s.ChatCompletionRequest, s.ChatCompletionResponse)  # fmt: skip
    return bp


def make_embeddings_blueprint() -> Blueprint:
    """/v1/embeddings (needs an embedding model)."""
    bp = Blueprint("openai_embeddings", __name__)
    _route(bp, "/v1/embeddings", embeddings.create_embedding, "POST", "Embeddings of one or more inputs.",
           s.EmbeddingRequest, s.EmbeddingResponse)  # fmt: skip
    return bp


def make_models_blueprint() -> Blueprint:
    """/v1/models (always mounted)."""
    bp = Blueprint("openai_models", __name__)
    _route(bp, "/v1/models", models.list_models, "GET", "Every served model.", response=s.ModelList)
    _route(bp, "/v1/models/<path:model_id>", models.retrieve_model, "GET", "One served model.",
           response=s.ModelCard)  # fmt: skip
    return bp


@hookimpl
def llmserve_protocols(register) -> None:
    register("openai", make_blueprint, capabilities=frozenset({GENERATE}))
    register("openai-embeddings", make_embeddings_blueprint, capabilities=frozenset({EMBED}))
    register("openai-models", make_models_blueprint, capabilities=frozenset())
