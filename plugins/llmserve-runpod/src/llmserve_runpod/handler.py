"""The job handler: worker-vllm's two input forms, answered by the server's own routes in process.

- ``{"openai_route": "/v1/...", "openai_input": {...}}``: the body goes to that route of the app
  (any route the server mounts: chat, completions, models, embeddings, responses, messages...);
  the JSON answer is the output, and a stream (``openai_input.stream``) yields its server-sent
  events as raw ``data: ...`` text (``RAW_OPENAI_OUTPUT=0``: the parsed JSON chunks instead).
- ``{"messages" | "prompt", "sampling_params": {...}, "stream": bool}``: see ``native``.

Anything else, and every error, is one ``{"error": {message, type, param, code}}`` object, which
RunPod reports as the job's error.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from werkzeug.exceptions import MethodNotAllowed, NotFound

from llmserve.api import InvalidRequestError, LLMServeError, error_body
from llmserve_runpod import native
from llmserve_runpod.asgi_call import call, sse_events
from llmserve_runpod.batching import BatchSize
from llmserve_runpod.env import WorkerSettings

log = logging.getLogger("llmserve.runpod")


class Worker:
    """The app (models loaded) and the worker's settings; ``handler`` is what RunPod runs."""

    def __init__(self, app, settings: WorkerSettings) -> None:
        self.app = app
        self.settings = settings
        self._started: asyncio.Future | None = None
        config = app.extensions["llmserve"].config
        self.headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}

    def concurrency(self, _current: int) -> int:
        """RunPod's concurrency_modifier: MAX_CONCURRENCY jobs at once."""
        return self.settings.max_concurrency

    async def start(self) -> None:
        """Start the engines in the event loop the jobs run in, once."""
        if self._started is None:
            self._started = asyncio.ensure_future(self.app.startup())
        await asyncio.shield(self._started)

    async def handler(self, job: dict[str, Any]) -> AsyncIterator[Any]:
        """One job: yields its output (once, or the chunks of a stream)."""
        await self.start()
        job_input = job.get("input")
        try:
            if isinstance(job_input, dict) and "openai_route" in job_input:
                outputs = self.openai(job_input)
            elif isinstance(job_input, dict) and ("messages" in job_input or "prompt" in job_input):
                outputs = native.run(self, job_input)
            else:
                raise InvalidRequestError(
                    "the job input must be {'openai_route': '/v1/...', 'openai_input': {...}} or "
                    "{'messages' | 'prompt': ..., 'sampling_params': {...}, 'stream': bool}"
                )
            async for output in outputs:
                yield output
        except LLMServeError as exc:
            yield error_body(exc)

    async def request(self, method: str, path: str, body: Any = None):
        return await call(self.app, method, path, body, self.headers)

    def method_for(self, route: str) -> str:
        """POST where the route takes it, else GET (``/v1/models``)."""
        adapter = self.app.url_map.bind("localhost")
        try:
            adapter.match(route, method="POST")
        except MethodNotAllowed:
            return "GET"
        except NotFound:
            pass
        return "POST"

    async def openai(self, job_input: dict[str, Any]) -> AsyncIterator[Any]:
        route, body = job_input.get("openai_route"), job_input.get("openai_input")
        unknown = set(job_input) - {"openai_route", "openai_input"}
        if unknown:
            raise InvalidRequestError(f"unknown job input field(s) beside openai_route: {sorted(unknown)}")
        if not isinstance(route, str) or not route.startswith("/"):
            raise InvalidRequestError("openai_route must be a path such as '/v1/chat/completions'")
        if body is not None and not isinstance(body, dict):
            raise InvalidRequestError("openai_input must be a JSON object")
        method = self.method_for(route)
        reply = await self.request(method, route, body if method == "POST" else None)
        if reply.content_type != "text/event-stream":
            yield await reply.content()
            return
        batch: list[Any] = []
        size = BatchSize(self.settings.default_batch_size, self.settings.min_batch_size,
                         self.settings.batch_size_growth_factor)  # fmt: skip
        try:
            async for event in sse_events(reply.chunks()):
                if not any(line.startswith("data:") for line in event.splitlines()):
                    continue  # a keep-alive comment
                item = event if self.settings.raw_openai_output else _event_data(event)
                if item is None:
                    continue
                batch.append(item)
                if len(batch) >= size.current:
                    yield "".join(batch) if self.settings.raw_openai_output else batch
                    batch = []
                    size.update()
            if batch:
                yield "".join(batch) if self.settings.raw_openai_output else batch
        finally:
            await reply.close()


def _event_data(event: str) -> Any:
    """The JSON of an event's data lines; None for comments (keep-alives) and ``[DONE]``."""
    data = "\n".join(line[5:].lstrip() for line in event.splitlines() if line.startswith("data:"))
    if not data or data == "[DONE]":
        return None
    return json.loads(data)
