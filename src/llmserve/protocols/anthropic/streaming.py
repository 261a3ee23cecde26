"""Anthropic's event stream for one answer: message_start, ping, per block content_block_start /
content_block_delta / content_block_stop (rising indexes), message_delta, message_stop.

``message_start`` waits for the engine's first output, so its usage already tells the prompt
tokens the prefix cache supplied. A failure after the stream started is an ``error`` event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from llmserve.api import EngineDeadError, GenerationStream, ParsedDelta
from llmserve.protocols.anthropic.errors import event, stream_error
from llmserve.protocols.anthropic.response import Answer
from llmserve.protocols.anthropic.signature import sign


class _Blocks:
    """The open content block and the events that open, extend and close blocks."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.index = -1
        self.open: str | None = None  # "thinking" | "text" | "tool_use"
        self.call: int | None = None  # the tool call the open tool_use block holds
        self.called = False
        self.thinking: list[str] = []  # the open thinking block's text, signed when it closes

    def start(self, block: dict[str, Any]) -> list[str]:
        out = self.close()
        self.index += 1
        self.open = block["type"]
        out.append(event("content_block_start", {"type": "content_block_start", "index": self.index,
                                                 "content_block": block}))  # fmt: skip
        return out

    def delta(self, delta: dict[str, Any]) -> str:
        return event(
            "content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta}
        )

    def close(self) -> list[str]:
        out: list[str] = []
        if self.open == "thinking":
            signature = sign(self.answer.signing_key, "".join(self.thinking))
            out.append(self.delta({"type": "signature_delta", "signature": signature}))
        if self.open is not None:
            out.append(event("content_block_stop", {"type": "content_block_stop", "index": self.index}))
        self.open, self.call = None, None
        return out

    def feed(self, parsed: ParsedDelta) -> list[str]:
        out: list[str] = []
        if parsed.reasoning:
            if self.open != "thinking":
                out += self.start({"type": "thinking", "thinking": "", "signature": ""})
                self.thinking = []
            self.thinking.append(parsed.reasoning)
            out.append(self.delta({"type": "thinking_delta", "thinking": parsed.reasoning}))
        if parsed.content:
            if self.open != "text":
                out += self.start({"type": "text", "text": ""})
            out.append(self.delta({"type": "text_delta", "text": parsed.content}))
        for call in parsed.tool_calls:
            if call.name is not None:
                self.called = True
                block = {
                    "type": "tool_use",
                    "id": self.answer.tool_id(call.index),
                    "name": call.name,
                    "input": {},
                }
                out += self.start(block)
                self.call = call.index
            if call.arguments and self.open == "tool_use" and call.index == self.call:
                out.append(self.delta({"type": "input_json_delta", "partial_json": call.arguments}))
        return out


async def events(stream: GenerationStream, answer: Answer) -> AsyncIterator[str]:
    """The whole event stream; closing it (a client gone) closes ``stream``, aborting the request."""
    blocks = _Blocks(answer)
    started = False
    try:
        async for out in stream:
            answer.cached = max(answer.cached, out.num_cached_tokens)
            if not started:
                started = True
                yield event(
                    "message_start", {"type": "message_start", "message": answer.message([], (None, None))}
                )
                yield event("ping", {"type": "ping"})
            for choice in out.outputs:
                answer.output_tokens = max(
                    answer.output_tokens + len(choice.token_ids), choice.num_output_tokens
                )
                parsed = answer.pipeline.feed(choice.text) if choice.text else ParsedDelta()
                if choice.finished:
                    parsed.add(answer.pipeline.finish())
                for item in blocks.feed(parsed):
                    yield item
                if choice.finished:
                    for item in blocks.close():
                        yield item
                    reason, sequence = answer.stop(choice, blocks.called)
                    delta = {"stop_reason": reason, "stop_sequence": sequence}
                    yield event(
                        "message_delta", {"type": "message_delta", "delta": delta, "usage": answer.usage()}
                    )
                    yield event("message_stop", {"type": "message_stop"})
                    return
        raise EngineDeadError("the request ended without a final output")
    except Exception as exc:  # CancelledError (client gone) is not an Exception: it propagates
        yield stream_error(exc)
    finally:
        await stream.aclose()
