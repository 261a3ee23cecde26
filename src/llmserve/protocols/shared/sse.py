"""Response bodies: compact JSON, server-sent events and in-stream errors."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from llmserve.errors import LLMServeError

log = logging.getLogger("llmserve.protocols")

SSE_DONE = "data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data: dict[str, Any] | BaseModel) -> str:
    """One server-sent event carrying ``data`` as compact JSON."""
    if isinstance(data, BaseModel):
        payload = data.model_dump_json()
    else:
        payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n"


def error_body(exc: BaseException) -> dict[str, Any]:
    """OpenAI's error object for an exception; unexpected errors are logged and reported as 500."""
    if isinstance(exc, LLMServeError):
        code = exc.code if exc.code is not None else exc.status
        return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": code}}
    log.error("unexpected error while streaming", exc_info=exc)
    return {
        "error": {
            "message": f"Internal server error: {type(exc).__name__}",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }


def sse_error(exc: BaseException) -> str:
    """The event sent when a stream fails after it started (followed by ``SSE_DONE``)."""
    return sse(error_body(exc))


def json_response(data: dict[str, Any], status: int = 200) -> Any:
    """A JSON response keeping the fields in the order they were built (vLLM's order), unsorted."""
    from quart import Response

    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return Response(body, status=status, mimetype="application/json")


def sse_response(events: AsyncIterator[str]) -> Any:
    """A Quart streaming response for ``events``; no response timeout (streams can be long).

    When the client disconnects, Quart cancels the iteration: CancelledError reaches the
    generator's await point and its ``finally`` blocks close the engine streams.
    """
    from quart import Response

    response = Response(events, mimetype="text/event-stream", headers=SSE_HEADERS)
    response.timeout = None
    return response
