"""GET and DELETE /v1/responses/{id}, and GET /v1/responses/{id}/input_items."""

from __future__ import annotations

from typing import Any

from llmserve.api import InvalidRequestError, json_response, sse_response
from llmserve.protocols.responses import background
from llmserve.protocols.responses.store import current_store


async def get_response(response_id: str) -> Any:
    """A stored response; with ``?stream=true`` a background response's events, those after
    ``starting_after`` (a sequence number) first, then the rest as they come."""
    from quart import request

    record = current_store().get(response_id)
    if request.args.get("stream", "false").lower() != "true":
        return json_response(record.response)
    log = background.event_log(response_id)
    if log is None:
        raise InvalidRequestError(
            "Events are kept only for background responses, while the server runs.", param="stream"
        )
    try:
        after = int(request.args.get("starting_after", -1))
    except ValueError:
        raise InvalidRequestError("starting_after must be an integer", param="starting_after") from None
    return sse_response(log.follow(after))


async def delete_response(response_id: str) -> Any:
    """Forget a stored response."""
    current_store().delete(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def list_input_items(response_id: str) -> Any:
    """The items a response was given, as a page (``order``, ``limit``, ``after``)."""
    from quart import request

    record = current_store().get(response_id)
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequestError("order must be 'asc' or 'desc'", param="order")
    try:
        limit = int(request.args.get("limit", 20))
    except ValueError:
        raise InvalidRequestError("limit must be an integer", param="limit") from None
    if not 1 <= limit <= 100:
        raise InvalidRequestError("limit must be between 1 and 100", param="limit")
    items = list(record.input) if order == "asc" else list(reversed(record.input))
    after = request.args.get("after")
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequestError(f"no input item {after!r} in this response", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return json_response({
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    })  # fmt: skip
