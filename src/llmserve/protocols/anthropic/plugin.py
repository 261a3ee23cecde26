"""The built-in Anthropic Messages protocol plugin: /v1/messages and /v1/messages/count_tokens.

Its errors, the API-key check's 401 included, take Anthropic's shape through the context's error
renderer for ``/v1/messages``; every answer carries a ``request-id`` header.
"""

from __future__ import annotations

from quart import Blueprint

from llmserve.api import GENERATE, ProtocolContext, document, hookimpl
from llmserve.protocols.anthropic import messages
from llmserve.protocols.anthropic import schemas as s
from llmserve.protocols.anthropic.errors import new_request_id, render_error

PREFIX = "/v1/messages"
_TAGS = ["anthropic"]


def make_blueprint(ctx: ProtocolContext) -> Blueprint:
    """The Messages routes (``?beta=true`` and any ``anthropic-beta`` header are accepted)."""
    ctx.register_error_renderer(PREFIX, render_error)
    bp = Blueprint("anthropic", __name__)
    create = document("Anthropic Messages: one assistant turn; Anthropic's event stream with `stream: true`.",
                      request=s.MessagesRequest, response=s.MessageResponse, tags=_TAGS)(messages.create_message)  # fmt: skip
    count = document("Anthropic Messages: the prompt's size in tokens.",
                     request=s.CountTokensRequest, response=s.CountTokensResponse, tags=_TAGS)(messages.count_tokens)  # fmt: skip
    bp.add_url_rule(PREFIX, view_func=create, methods=["POST"])
    bp.add_url_rule(PREFIX + "/count_tokens", view_func=count, methods=["POST"])

    @bp.after_request
    async def _request_id(response):
        response.headers.setdefault("request-id", new_request_id())
        return response

    return bp


@hookimpl
def llmserve_protocols(register) -> None:
    register("anthropic", make_blueprint, capabilities=frozenset({GENERATE}))
