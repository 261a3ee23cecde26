"""GET /v1/models and GET /v1/models/{id}: the generation model (every served name) and the
embedding model."""

from __future__ import annotations

from typing import Any

from llmserve.errors import ModelNotFoundError
from llmserve.protocols.common import json_response
from llmserve.state import ServerState, get_state


def model_cards(state: ServerState) -> list[dict[str, Any]]:
    cards = []
    if state.engine is not None and state.model_name:
        names = state.config.model_names or [state.model_name]
        for name in dict.fromkeys(names):
            cards.append(_card(state, name, state.model_path, state.engine.max_model_len))
    if state.embedder is not None and state.embedding_model_name:
        cards.append(
            _card(state, state.embedding_model_name, state.embedding_model_path, state.embedder.max_model_len)
        )
    return cards


def _card(state: ServerState, name: str, root: str | None, max_model_len: int) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": state.created,
        "owned_by": "llmserve",
        "root": str(root) if root is not None else name,
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [],
    }


async def list_models() -> Any:
    return json_response({"object": "list", "data": model_cards(get_state())})


async def retrieve_model(model_id: str) -> Any:
    state = get_state()
    for card in model_cards(state):
        if card["id"] == model_id:
            return json_response(card)
    kind = state.aliases.get(model_id)
    if kind == "generate" and state.engine is not None:
        return json_response(_card(state, model_id, state.model_path, state.engine.max_model_len))
    if kind == "embed" and state.embedder is not None:
        return json_response(_card(state, model_id, state.embedding_model_path, state.embedder.max_model_len))
    raise ModelNotFoundError(f"The model `{model_id}` does not exist.", param="model")
