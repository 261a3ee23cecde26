"""Registers the /invocations blueprint through llmserve's protocol hook."""

from __future__ import annotations

from quart import Blueprint, current_app, request
from werkzeug.exceptions import NotFound

from llmserve.api import InvalidRequestError, document, hookimpl

# Body key -> the OpenAI route that serves it, checked in this order.
ROUTES = (("messages", "/v1/chat/completions"), ("prompt", "/v1/completions"), ("input", "/v1/embeddings"))


def make_blueprint() -> Blueprint:
    bp = Blueprint("sagemaker", __name__)

    @bp.post("/invocations")
    @document(
        "SageMaker inference: a chat, completion or embeddings body, answered by the matching OpenAI route.",
        tags=["sagemaker"],
        requestBody={"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
    )
    async def invocations():
        body = await request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            raise InvalidRequestError("The request body must be a JSON object.")
        path = next((route for key, route in ROUTES if key in body), None)
        if path is None:
            raise InvalidRequestError("The body needs one of 'messages', 'prompt' or 'input'.")
        try:
            endpoint, args = current_app.url_map.bind("").match(path, method="POST")
        except NotFound:
            raise InvalidRequestError(
                f"{path} is not served by this server (model capability missing)."
            ) from None
        return await current_app.view_functions[endpoint](**args)

    return bp


@hookimpl
def llmserve_protocols(register):
    register("sagemaker", make_blueprint, capabilities=frozenset())
