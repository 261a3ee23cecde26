"""``background: true``: the response is stored as "queued" and answered at once (or, with
``stream: true``, followed as it runs); a task generates it (GET shows "in_progress", then the
result; GET ``?stream=true&starting_after=N`` replays its events) and POST
/v1/responses/{id}/cancel stops it.

Cancelling the task closes its engine stream, which aborts the request and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from llmserve.api import InvalidRequestError, json_response
from llmserve.protocols.responses.store import StoredResponse, current_store

_TASKS = "llmserve.responses.tasks"
_LOGS = "llmserve.responses.events"
_KEPT_LOGS = 256  # finished background responses whose events stay replayable


class EventLog:
    """The events of one background response, kept while the server runs so that clients can
    follow it (``stream: true``) or replay it (GET ``?stream=true&starting_after=N``)."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.done = False
        self._changed = asyncio.Event()

    def add(self, event: str) -> None:
        self.events.append(event)
        self._wake()

    def close(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def follow(self, after: int = -1) -> AsyncIterator[str]:
        """Every event numbered after ``after`` (events are numbered from 0), then the new ones
        as they come, until the response ends."""
        index = after + 1
        while True:
            while index < len(self.events):
                yield self.events[index]
                index += 1
            if self.done:
                return
            changed = self._changed
            await changed.wait()


def event_log(response_id: str) -> EventLog | None:
    from quart import current_app

    return current_app.extensions.get(_LOGS, {}).get(response_id)


def start(
    record: StoredResponse, events: Callable[[], AsyncIterator[str]], shell_body: Callable[..., dict]
) -> EventLog:
    """Store ``record`` as queued and run ``events`` (the response's stream, which stores the
    final response itself) in a task; the events are kept in the returned log."""
    from quart import current_app

    store = current_store()
    store.put(record)
    tasks: dict[str, asyncio.Task] = current_app.extensions.setdefault(_TASKS, {})
    logs: dict[str, EventLog] = current_app.extensions.setdefault(_LOGS, {})
    response_id = record.response["id"]
    log = logs[response_id] = EventLog()
    for old in [key for key, value in logs.items() if value.done][: max(len(logs) - _KEPT_LOGS, 0)]:
        del logs[old]

    async def work() -> None:
        try:
            store.put(StoredResponse(shell_body("in_progress"), record.input, record.context))
            async for event in events():
                log.add(event)
        except asyncio.CancelledError:
            store.put(StoredResponse(shell_body("cancelled"), record.input, record.context))
        finally:
            tasks.pop(response_id, None)
            log.close()

    tasks[response_id] = asyncio.get_running_loop().create_task(work())
    return log


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
