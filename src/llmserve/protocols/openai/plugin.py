"""The built-in OpenAI protocol plugin: registered through the hook like any third-party one."""

from __future__ import annotations

from quart import Blueprint

from llmserve import hookimpl
from llmserve.protocols.openai import chat, completions, embeddings, models


def make_blueprint() -> Blueprint:
    """/v1/completions and /v1/chat/completions (needs a generation model)."""
    bp = Blueprint("openai", __name__)
    bp.add_url_rule("/v1/completions", view_func=completions.create_completion, methods=["POST"])
    bp.add_url_rule("/v1/chat/completions", view_func=chat.create_chat_completion, methods=["POST"])
    return bp


def make_embeddings_blueprint() -> Blueprint:
    """/v1/embeddings (needs an embedding model)."""
    bp = Blueprint("openai_embeddings", __name__)
    bp.add_url_rule("/v1/embeddings", view_func=embeddings.create_embedding, methods=["POST"])
    return bp


def make_models_blueprint() -> Blueprint:
    """/v1/models (always mounted)."""
    bp = Blueprint("openai_models", __name__)
    bp.add_url_rule("/v1/models", view_func=models.list_models, methods=["GET"])
    bp.add_url_rule("/v1/models/<path:model_id>", view_func=models.retrieve_model, methods=["GET"])
    return bp


@hookimpl
def llmserve_protocols(register) -> None:
    register("openai", make_blueprint, capabilities=frozenset({"generate"}))
    register("openai-embeddings", make_embeddings_blueprint, capabilities=frozenset({"embed"}))
    register("openai-models", make_models_blueprint, capabilities=frozenset())
