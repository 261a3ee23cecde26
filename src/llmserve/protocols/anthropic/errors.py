"""Anthropic's error shape: ``{"type": "error", "error": {"type", "message"}}``, its error types and
statuses (a full queue is 529 ``overloaded_error``), and the ``request-id`` header."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from llmserve.api import LLMServeError, json_response

log = logging.getLogger("llmserve.protocols")

# status -> (Anthropic's status, error type)
_TYPES = {
    400: (400, "invalid_request_error"),
    401: (401, "authentication_error"),
    402: (402, "billing_error"),
    403: (403, "permission_error"),
    404: (404, "not_found_error"),
    405: (405, "invalid_request_error"),
    413: (413, "request_too_large"),
    429: (429, "rate_limit_error"),
    500: (500, "api_error"),
    503: (529, "overloaded_error"),
    504: (504, "timeout_error"),
    529: (529, "overloaded_error"),
}


def anthropic_status(status: int) -> tuple[int, str]:
    """(status to answer with, Anthropic error type) for one of the server's statuses."""
    if status in _TYPES:
        return _TYPES[status]
    return (status, "invalid_request_error") if 400 <= status < 500 else (status, "api_error")


def error_object(status: int, message: str) -> tuple[int, dict[str, Any]]:
    """(status, body) of an error."""
    status, type_ = anthropic_status(status)
    return status, {"type": "error", "error": {"type": type_, "message": message}}


def render_error(status: int, message: str) -> Any:
    """The Quart response for an error on an Anthropic route (the core's error renderer)."""
    status, body = error_object(status, message)
    response = json_response(body, status)
    response.headers["request-id"] = new_request_id()
    return response


def stream_error(exc: BaseException) -> str:
    """The ``event: error`` sent when a stream fails after it started."""
    if isinstance(exc, LLMServeError):
        _, body = error_object(exc.status, exc.message)
    else:
        log.error("unexpected error while streaming", exc_info=exc)
        _, body = error_object(500, f"Internal server error: {type(exc).__name__}")
    return event("error", body)


def event(name: str, data: dict[str, Any]) -> str:
    """One server-sent event in Anthropic's framing (``event:`` line, then ``data:``)."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def anthropic_id(prefix: str) -> str:
    """A fresh id in Anthropic's style: ``msg_...``, ``toolu_...``, ``req_...``."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def new_request_id() -> str:
    """A fresh ``req_...`` id for the ``request-id`` header."""
    return anthropic_id("req")
