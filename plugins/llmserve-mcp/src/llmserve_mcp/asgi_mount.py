"""An ASGI app served from a Quart route, with its lifespan run beside the server's.

The route keeps everything the llmserve app does around its own routes (the API key, limits,
error shapes); the request is handed to the ASGI app as it came, its answer streamed back as it
is sent. The app's lifespan (the MCP SDK's session manager) runs in its own task from the
server's start to its stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from quart import Response, request

log = logging.getLogger("llmserve.mcp")


class AsgiMount:
    """Serve ``app`` (an ASGI application) from Quart views; ``startup`` / ``shutdown`` drive
    its lifespan protocol."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._lifespan: asyncio.Task | None = None
        self._to_app: asyncio.Queue = asyncio.Queue()
        self._from_app: asyncio.Queue = asyncio.Queue()

    # --- lifespan --------------------------------------------------------------------------------

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self._lifespan = asyncio.get_running_loop().create_task(
            self.app(scope, self._to_app.get, self._from_app.put)
        )
        await self._to_app.put({"type": "lifespan.startup"})
        await self._expect("lifespan.startup")

    async def shutdown(self) -> None:
        if self._lifespan is None or self._lifespan.done():
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self._expect("lifespan.shutdown"), timeout=10)
        finally:
            self._lifespan.cancel()
            with contextlib.suppress(BaseException):
                await self._lifespan
            self._lifespan = None

    async def _expect(self, step: str) -> None:
        get = asyncio.ensure_future(self._from_app.get())
        done, _ = await asyncio.wait({get, self._lifespan}, return_when=asyncio.FIRST_COMPLETED)
        if get not in done:
            get.cancel()
            self._lifespan.result()  # raises what the app raised
            raise RuntimeError(f"the ASGI app ended its lifespan before {step} completed")
        message = get.result()
        if message["type"] == f"{step}.failed":
            raise RuntimeError(f"{step} failed: {message.get('message', '')}")

    # --- requests --------------------------------------------------------------------------------

    async def handle(self) -> Response:
        """Answer the current Quart request with the ASGI app."""
        scope = dict(request.scope)
        data: bytes | None = await request.get_data(cache=False)
        disconnected = asyncio.Event()
        sent: asyncio.Queue = asyncio.Queue()

        async def receive() -> dict[str, Any]:
            nonlocal data
            if data is not None:
                message = {"type": "http.request", "body": data, "more_body": False}
                data = None
                return message
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def run() -> None:
            try:
                await self.app(scope, receive, sent.put)
            finally:
                await sent.put(None)

        task = asyncio.get_running_loop().create_task(run())
        start = await sent.get()
        if start is None or start["type"] != "http.response.start":
            await _finish(task, disconnected, 1.0)
            return Response("", status=500)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])]

        async def chunks():
            complete = False
            try:
                while True:
                    message = await sent.get()
                    if message is None:
                        complete = True
                        return
                    if message["type"] == "http.response.body":
                        if message.get("body"):
                            yield message["body"]
                        if not message.get("more_body", False):
                            complete = True
                            return
            finally:  # sent in full: let the app finish; client gone: tell it, then stop it
                await _finish(task, disconnected, 5.0 if complete else 1.0)

        response = Response(chunks(), status=start["status"], headers=headers)
        response.timeout = None  # server-sent event streams stay open
        return response


async def _finish(task: asyncio.Task, disconnected: asyncio.Event, grace: float) -> None:
    disconnected.set()
    if not task.done():
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(task), grace)
    if not task.done():
        task.cancel()
    with contextlib.suppress(BaseException):
        await task
