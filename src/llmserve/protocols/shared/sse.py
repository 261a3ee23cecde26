"""Response bodies: compact JSON, server-sent events and in-stream errors."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from llmserve.errors import LLMServeError

log = logging.getLogger("llmserve.protocols")

SSE_DONE = "data: [DONE]\n\n"
HEARTBEAT = ": keep-alive\n\n"
HEARTBEAT_S = 10.0
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


def sse_response(events: AsyncIterator[str], heartbeat_s: float = HEARTBEAT_S) -> Any:
    """A Quart streaming response for ``events``; no response timeout (streams can be long).
    An SSE comment goes out after every ``heartbeat_s`` of silence (a request waiting in the
    queue), so proxies and clients do not give up on an idle connection.

    When the client disconnects, Quart cancels the iteration: CancelledError reaches the
    generator's await point and its ``finally`` blocks close the engine streams.
    """
    from quart import Response

    response = Response(
        with_heartbeat(events, heartbeat_s), mimetype="text/event-stream", headers=SSE_HEADERS
    )
    response.timeout = None
    return response


async def with_heartbeat(events: AsyncIterator[str], interval: float) -> AsyncIterator[str]:
    """``events``, with ``HEARTBEAT`` whenever the next one takes longer than ``interval``."""
    pending: asyncio.Task | None = None
    try:
        while True:
            pending = pending or asyncio.ensure_future(events.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield HEARTBEAT
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            try:
                await pending
            except BaseException:  # noqa: BLE001 - the stream's own cancellation is done with
                pass
        await events.aclose()


def release_after_body(response: Any, release) -> None:
    """Call ``release()`` once ``response``'s body has been sent, or sending it failed (a client
    gone mid-stream): for counters that must cover a streamed answer to its end."""
    response.response = _ReleasedWhenSent(response.response, release)


class _ReleasedWhenSent:
    def __init__(self, body, release) -> None:
        self.body, self.release = body, release

    async def __aenter__(self):
        return await self.body.__aenter__()

    async def __aexit__(self, *exc) -> None:
        try:
            await self.body.__aexit__(*exc)
        finally:
            self.release()
