"""GET /v1/models and GET /v1/models/{id}: every served model, under each of its names."""

from __future__ import annotations

from typing import Any

from llmserve.api import ModelNotFoundError, ProtocolContext, ServedModel, context, json_response


def model_cards(ctx: ProtocolContext) -> list[dict[str, Any]]:
    return [_card(model, name) for model in ctx.models for name in model.names]


def _card(model: ServedModel, name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": model.created,
        "owned_by": "llmserve",
        "root": model.path,
        "parent": None,
        "max_model_len": model.max_model_len,
        "permission": [],
    }


async def list_models() -> Any:
    return json_response({"object": "list", "data": model_cards(context())})


async def retrieve_model(model_id: str) -> Any:
    model = context().models.get(model_id)
    if model is None:
        raise ModelNotFoundError(f"The model `{model_id}` does not exist.", param="model")
    return json_response(_card(model, model_id))
