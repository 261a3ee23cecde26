"""POST /invocations: the body picks the route, as vLLM's SageMaker entry point does.

The candidates are tried in vLLM's order (chat, completion, embeddings, classify, score, rerank,
pooling); among the routes this server mounts, the first whose request model the body validates
against answers, with its own response (streams included) and errors.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from quart import Blueprint, Response, current_app, request
from werkzeug.exceptions import MethodNotAllowed, NotFound

from llmserve.api import InvalidRequestError, context, document, request_models

# (what the body is, the route that serves it), in vLLM's order.
CANDIDATES = (
    ("chat completion", "/v1/chat/completions"),
    ("completion", "/v1/completions"),
    ("embeddings", "/v1/embeddings"),
    ("classify", "/classify"),
    ("score", "/score"),
    ("rerank", "/rerank"),
    ("pooling", "/pooling"),
)


def _view(path: str):
    """The view function mounted at ``path`` for POST, or None."""
    try:
        endpoint, _ = current_app.url_map.bind("").match(path, method="POST")
    except (NotFound, MethodNotAllowed):
        return None
    return current_app.view_functions.get(endpoint)


def _reject_constant(name: str) -> None:
    raise InvalidRequestError(f"The request body is not valid JSON: {name} is not a JSON value")


async def _body() -> dict[str, Any]:
    raw = await request.get_data(cache=True)
    try:
        body = json.loads(raw or b"", parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"JSON decode error: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError(f"The request body must be a JSON object, got {type(body).__name__}.")
    return body


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err.get("loc", ())) or "body"
    return f"{where}: {err.get('msg', 'invalid')}"


async def invocations():
    body = await _body()
    tried: list[str] = []
    closest: str | None = None
    missing: list[str] = []
    for kind, path in CANDIDATES:
        view = _view(path)
        models = request_models(view) if view is not None else ()
        if not models:
            missing.append(kind)
            continue
        for model in models:
            tried.append(model.__name__)
            try:
                model.model_validate(body)
            except ValidationError as exc:
                required = [name for name, f in model.model_fields.items() if f.is_required()]
                if closest is None and required and all(name in body for name in required):
                    closest = f"as {model.__name__}, {_first_error(exc)}"
                continue
            return await view()
    message = f"Cannot find suitable handler for request. Expected one of: {', '.join(tried)}."
    if closest:
        message += f" The body comes closest {closest}."
    if missing:
        message += f" Not served here (no model for them is loaded): {', '.join(missing)}."
    raise InvalidRequestError(message)


async def _ping() -> Response:
    return Response("", status=200 if context().is_healthy() else 503)


def make_blueprint(ctx) -> Blueprint:
    """/invocations, and /ping where the built-in vllm protocol (which has it) is not mounted."""
    bp = Blueprint("sagemaker", __name__)
    view = document(
        "SageMaker inference: the body is a chat, completion, embeddings, classify, score, rerank or "
        "pooling request (tried in that order) and is answered by that route, streaming when it asks.",
        tags=["sagemaker"],
        requestBody={"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
    )(invocations)
    bp.add_url_rule("/invocations", view_func=view, methods=["POST"])
    if "vllm" not in ctx.protocols:
        ping = document("Health check: 200 when the engines run, 503 when one died.", tags=["sagemaker"])(
            _ping
        )
        bp.add_url_rule("/ping", view_func=ping, methods=["GET", "POST"])
    return bp
