"""One HTTP request answered by the app in process: an ASGI call, no socket and no second server.

The response body is read as the app sends it, so a stream's chunks arrive as they are made;
closing the body early tells the app the client went away (the route aborts the engine request
and frees its KV blocks, as for a dropped HTTP client).
"""

from __future__ import annotations

import asyncio
import codecs
import json
from collections.abc import AsyncIterator
from typing import Any

_END = object()


class Reply:
    """Status, lower-cased headers and the body, read as the app sends it. ``close()`` (also
    reached at the end of ``chunks()``) tells the app the client is gone and waits for it."""

    def __init__(self, status: int, headers: dict[str, str], messages: asyncio.Queue, gone, task) -> None:
        self.status = status
        self.headers = headers
        self._messages, self._gone, self._task = messages, gone, task

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                message = await self._messages.get()
                if message is _END:
                    return
                if message["type"] != "http.response.body":
                    continue
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    return
        finally:
            await self.close()

    async def close(self) -> None:
        self._gone.set()
        if not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 30)
            except asyncio.TimeoutError:
                self._task.cancel()

    async def content(self) -> Any:
        """The whole body: parsed JSON, or text."""
        data = b"".join([chunk async for chunk in self.chunks()])
        if self.content_type == "application/json":
            return json.loads(data)
        return data.decode("utf-8", "replace")


async def call(app, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
    """Send one request to the ASGI ``app``; returns once the response has started."""
    data = b"" if body is None else json.dumps(body).encode()
    raw_headers = [(b"host", b"localhost"), (b"content-length", str(len(data)).encode())]
    if body is not None:
        raw_headers.append((b"content-type", b"application/json"))
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 0),
        "server": ("localhost", 80),
        "extensions": {},
    }
    messages: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": data, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await messages.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            await messages.put(_END)

    task = asyncio.ensure_future(run())
    start = await messages.get()
    if start is _END:  # the app failed before answering
        await task
        raise RuntimeError(f"{method} {path}: the app sent no response")
    headers_out = {k.decode("latin1").lower(): v.decode("latin1") for k, v in start.get("headers", [])}
    return Reply(start["status"], headers_out, messages, gone, task)


def _text(body: AsyncIterator[bytes]) -> AsyncIterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")

    async def text() -> AsyncIterator[str]:
        async for chunk in body:
            yield decoder.decode(chunk)

    return text()


async def sse_events(body: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Server-sent events, each whole with its closing blank line, as they arrive."""
    buffer = ""
    async for chunk in _text(body):
        buffer += chunk
        while "\n\n" in buffer:
            event, buffer = buffer.split("\n\n", 1)
            yield event + "\n\n"
    if buffer.strip():
        yield buffer + "\n\n"


async def ndjson(body: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    """Newline-delimited JSON objects, as they arrive."""
    buffer = ""
    async for chunk in _text(body):
        buffer += chunk
        while "\n" in buffer:
            line, buffer = buffer.split("\n", 1)
            if line.strip():
                yield json.loads(line)
    if buffer.strip():
        yield json.loads(buffer)
