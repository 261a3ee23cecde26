"""The built-in Responses API plugin (/v1/responses), registered through the protocol hook."""

from __future__ import annotations

import asyncio

from quart import Blueprint, current_app

from llmserve.api import GENERATE, document, hookimpl
from llmserve.protocols.responses import background, create, retrieve
from llmserve.protocols.responses import schemas as s
from llmserve.protocols.responses.store import current_store

_TAGS = ["responses"]


def _route(bp: Blueprint, path: str, view, method: str, summary: str, request=None, response=None) -> None:
    view = document(summary, request=request, response=response, tags=_TAGS)(view)
    bp.add_url_rule(path, view_func=view, methods=[method])


def make_blueprint() -> Blueprint:
    """/v1/responses and its stored responses (needs a generation model)."""
    bp = Blueprint("responses", __name__)
    _route(bp, "/v1/responses", create.create_response, "POST",
           "Create a response; streams server-sent events with `stream: true`.",
           s.ResponseRequest, s.ResponseObject)  # fmt: skip
    _route(bp, "/v1/responses/<response_id>", retrieve.get_response, "GET", "A stored response.",
           response=s.ResponseObject)  # fmt: skip
    _route(bp, "/v1/responses/<response_id>", retrieve.delete_response, "DELETE", "Delete a stored response.",
           response=s.DeletedResponse)  # fmt: skip
    _route(bp, "/v1/responses/<response_id>/input_items", retrieve.list_input_items, "GET",
           "The input items of a stored response.", response=s.InputItemList)  # fmt: skip
    _route(bp, "/v1/responses/<response_id>/cancel", background.cancel_response, "POST",
           "Cancel a background response.", s.CancelRequest, s.ResponseObject)  # fmt: skip

    @bp.before_app_serving
    async def _open_store() -> None:
        current_store()  # a store that cannot be opened fails the start, not the first request

    @bp.after_app_serving
    async def _close_store() -> None:
        tasks = list(current_app.extensions.get("llmserve.responses.tasks", {}).values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # they store "cancelled" before the close
        store = current_app.extensions.pop("llmserve.responses", None)
        if store is not None:
            store.close()

    return bp


@hookimpl
def llmserve_protocols(register) -> None:
    register("responses", make_blueprint, capabilities=frozenset({GENERATE}))
