"""Streaming: parsed deltas -> OpenAI's Responses events, numbered by a rising sequence_number.

One item is open at a time for text (reasoning or the message); a reasoning delta after message
text, or message text after reasoning, closes the open one and opens the next. Function calls
open as their first delta arrives and close when the generation ends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from llmserve.api import (
    GenerationStream,
    ParsedDelta,
    ParserPipeline,
    ProtocolContext,
    ServedModel,
    error_body,
)
from llmserve.protocols.responses.output import (
    ResponseShell,
    Usage,
    call_item,
    message_item,
    reasoning_item,
    text_part,
)


class EventWriter:
    """The event stream of one response."""

    def __init__(
        self,
        shell: ResponseShell,
        pipeline: ParserPipeline,
        max_calls: int | None,
        input_tokens: int,
        logprobs: Callable[[list], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.shell, self.pipeline, self.max_calls, self.logprobs = shell, pipeline, max_calls, logprobs
        self.pending: list[dict[str, Any]] = []  # logprobs of tokens whose text is not sent yet
        self.part_logprobs: list[dict[str, Any]] = []  # the open message's logprobs
        self.usage = Usage(input_tokens)
        self.seq = 0
        self.items: list[dict[str, Any]] = []  # every item added, finished ones completed
        self.open: dict[str, Any] | None = None  # the reasoning or message item being written
        self.text = ""  # the open item's text so far
        self.calls: dict[int, dict[str, Any]] = {}  # tool-call delta index -> its open item

    def event(self, kind: str, **fields: Any) -> str:
        """One server-sent event, named as OpenAI names it."""
        data = {"type": kind, **fields, "sequence_number": self.seq}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"

    async def events(
        self,
        stream: GenerationStream,
        store: Callable[[dict[str, Any]], None],
        ctx: ProtocolContext,
        model: ServedModel,
    ) -> AsyncIterator[str]:
        """Every event, from response.created to response.completed / .incomplete / .failed;
        the final response goes to ``store``."""
        shell = self.shell
        yield self.event("response.created", response=shell.body("in_progress"))
        yield self.event("response.in_progress", response=shell.body("in_progress"))
        finish_reason = None
        try:
            async for out in stream:
                self.usage.cached_tokens = max(self.usage.cached_tokens, out.num_cached_tokens)
                for choice in out.outputs:  # one choice, present when it changed
                    self.usage.output_tokens += len(choice.token_ids)
                    if self.logprobs is not None and choice.logprobs:
                        self.pending += self.logprobs(choice.logprobs)
                    parsed = self.pipeline.feed(choice.text) if choice.text else ParsedDelta()
                    if choice.finished:
                        parsed.add(self.pipeline.finish())
                        finish_reason = choice.finish_reason
                    for event in self.deltas(parsed):
                        yield event
            for event in self.finish():
                yield event
        except Exception as exc:  # CancelledError (client gone) is not an Exception: it propagates
            error = error_body(exc)["error"]
            failed = shell.body("failed", self.items, self.usage, error={
                "code": "server_error" if error["code"] == 500 else "invalid_request",
                "message": error["message"],
            })  # fmt: skip
            store(failed)
            yield self.event("response.failed", response=failed)
            return
        finally:
            await stream.aclose()
        if self.pipeline.reasoning:
            self.usage.reasoning_tokens = len(
                ctx.tokenize(model, self.pipeline.reasoning, add_special_tokens=False)
            )
        body = shell.body("completed", self.items, self.usage, finish_reason)
        store(body)
        yield self.event(f"response.{body['status']}", response=body)

    def deltas(self, parsed: ParsedDelta) -> list[str]:
        """The events of one parsed delta."""
        events: list[str] = []
        if parsed.reasoning:
            events += self.write("reasoning", parsed.reasoning)
        if parsed.content:
            events += self.write("message", parsed.content)
        for delta in parsed.tool_calls:
            item = self.calls.get(delta.index)
            if item is None:
                if self.max_calls is not None and len(self.calls) >= self.max_calls:
                    continue
                events += self.close_text()
                item = call_item(delta.name or "", "", delta.id, status="in_progress")
                self.calls[delta.index] = item
                self.items.append(item)
                events.append(
                    self.event("response.output_item.added", output_index=self.index(item), item=item)
                )
            if delta.arguments:
                item["arguments"] += delta.arguments
                events.append(self.event(
                    "response.function_call_arguments.delta", item_id=item["id"],
                    output_index=self.index(item), delta=delta.arguments,
                ))  # fmt: skip
        return events

    def write(self, kind: str, text: str) -> list[str]:
        """Text for the open item of ``kind``, opening it (and closing the other) first."""
        events: list[str] = []
        if self.open is None or self.open["type"] != kind:
            events += self.close_text() + self.open_text(kind)
        self.text += text
        item = self.open
        where = {"item_id": item["id"], "output_index": self.index(item), "content_index": 0}
        if kind == "reasoning":
            self.pending = []  # reasoning tokens' logprobs are not the message's
            events.append(self.event("response.reasoning_text.delta", **where, delta=text))
        else:
            logprobs, self.pending = self.pending, []
            self.part_logprobs += logprobs
            events.append(self.event("response.output_text.delta", **where, delta=text, logprobs=logprobs))
        return events

    def open_text(self, kind: str) -> list[str]:
        """Add an in-progress reasoning or message item."""
        if kind == "reasoning":
            item = reasoning_item("", status="in_progress")
        else:
            item = message_item(None, status="in_progress")
        self.open, self.text, self.part_logprobs = item, "", []
        self.items.append(item)
        i = self.index(item)
        events = [self.event("response.output_item.added", output_index=i, item=item)]
        if kind == "message":
            events.append(self.event(
                "response.content_part.added", item_id=item["id"], output_index=i, content_index=0,
                part=text_part(""),
            ))  # fmt: skip
        return events

    def close_text(self) -> list[str]:
        """Finish the open reasoning or message item."""
        item = self.open
        if item is None:
            return []
        self.open = None
        i = self.index(item)
        where = {"item_id": item["id"], "output_index": i, "content_index": 0}
        if item["type"] == "reasoning":
            done = reasoning_item(self.text, item["id"])
            events = [self.event("response.reasoning_text.done", **where, text=self.text)]
        else:
            logprobs, self.pending = self.part_logprobs + self.pending, []
            done = message_item(self.text, item["id"], logprobs=logprobs)
            events = [
                self.event("response.output_text.done", **where, text=self.text, logprobs=logprobs),
                self.event("response.content_part.done", **where, part=text_part(self.text, logprobs)),
            ]
        self.items[i] = done
        events.append(self.event("response.output_item.done", output_index=i, item=done))
        return events

    def finish(self) -> list[str]:
        """Close everything still open; an output with nothing in it gets an empty message."""
        events = [] if self.items else self.open_text("message")
        events += self.close_text()
        for item in self.calls.values():
            i = self.index(item)
            item["status"] = "completed"
            events.append(self.event(
                "response.function_call_arguments.done", item_id=item["id"], output_index=i,
                arguments=item["arguments"], name=item["name"],
            ))  # fmt: skip
            events.append(self.event("response.output_item.done", output_index=i, item=dict(item)))
        return events

    def index(self, item: dict[str, Any]) -> int:
        """The item's output_index."""
        return next(i for i, x in enumerate(self.items) if x["id"] == item["id"])
