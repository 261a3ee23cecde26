"""``background: true``: the response is stored as "queued" and answered at once; a task generates
it (GET shows "in_progress", then the result) and POST /v1/responses/{id}/cancel stops it.

Cancelling the task closes its engine stream, which aborts the request and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from llmserve.api import InvalidRequestError, error_body, json_response
from llmserve.protocols.responses.store import StoredResponse, current_store

_TASKS = "llmserve.responses.tasks"


def start(
    record: StoredResponse, run: Callable[[], Awaitable[dict[str, Any]]], shell_body: Callable[..., dict]
) -> dict[str, Any]:
    """Store ``record`` as queued and start ``run`` (which returns the final body) in a task."""
    from quart import current_app

    store = current_store()
    store.put(record)
    tasks: dict[str, asyncio.Task] = current_app.extensions.setdefault(_TASKS, {})
    response_id = record.response["id"]

    async def work() -> None:
        try:
            store.put(StoredResponse(shell_body("in_progress"), record.input, record.context))
            body = await run()
        except asyncio.CancelledError:
            body = shell_body("cancelled")
        except Exception as exc:  # the failure is the response's result, shown by GET
            error = error_body(exc)["error"]
            body = shell_body("failed", error={"code": "server_error", "message": error["message"]})
        finally:
            tasks.pop(response_id, None)
        store.put(StoredResponse(body, record.input, record.context))

    tasks[response_id] = asyncio.get_running_loop().create_task(work())
    return record.response


async def cancel_response(response_id: str) -> Any:
    """POST /v1/responses/{id}/cancel: stop a background response; answers it as it now stands."""
    from quart import current_app

    store = current_store()
    record = store.get(response_id)
    if not record.response.get("background"):
        raise InvalidRequestError("Only background responses can be cancelled.", param="response_id")
    task = current_app.extensions.get(_TASKS, {}).get(response_id)
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    record = store.get(response_id)
    if record.response["status"] in ("queued", "in_progress"):  # cancelled before its task ran
        record.response["status"] = "cancelled"
        store.put(record)
    return json_response(record.response)
