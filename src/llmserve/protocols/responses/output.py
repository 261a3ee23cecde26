"""The response object and its output items, built from parsed generations."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from llmserve.api import ToolCall, now
from llmserve.protocols.responses.schemas import ResponseRequest


def new_id(prefix: str) -> str:
    """An id as OpenAI spells them: ``resp_``, ``msg_``, ``fc_``, ``rs_`` and 32 hex digits."""
    return f"{prefix}_{uuid.uuid4().hex}"


def reasoning_item(text: str, item_id: str | None = None, status: str = "completed") -> dict[str, Any]:
    """A reasoning item: the reasoning parser's text, as its content and its summary."""
    return {
        "id": item_id or new_id("rs"),
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}] if text else [],
        "content": [{"type": "reasoning_text", "text": text}] if text else [],
        "status": status,
    }


def text_part(text: str, logprobs: list | None = None) -> dict[str, Any]:
    """An ``output_text`` content part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def message_item(
    text: str | None, item_id: str | None = None, status: str = "completed", logprobs: list | None = None
) -> dict[str, Any]:
    """The assistant's message; an in-progress one has no parts yet."""
    return {
        "id": item_id or new_id("msg"),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [] if text is None else [text_part(text, logprobs)],
    }


def call_item(
    name: str, arguments: str, call_id: str | None, item_id: str | None = None, status: str = "completed"
) -> dict[str, Any]:
    """A function_call item; ``call_id`` pairs it with the function_call_output sent back."""
    return {
        "id": item_id or new_id("fc"),
        "type": "function_call",
        "call_id": call_id or new_id("call"),
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def output_items(
    reasoning: str | None,
    content: str | None,
    calls: list[ToolCall],
    max_calls: int | None,
    logprobs: list | None = None,
) -> list[dict[str, Any]]:
    """The items of a whole generation, in the order they were written."""
    items = []
    if reasoning:
        items.append(reasoning_item(reasoning))
    if content or not calls:
        items.append(message_item(content or "", logprobs=logprobs))
    for call in calls[:max_calls]:
        items.append(call_item(call.name, call.arguments, call.id or None))
    return items


def output_text(items: list[dict[str, Any]]) -> str:
    """The SDK's ``output_text``: every message's text, joined."""
    return "".join(
        part["text"]
        for item in items
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


@dataclass(slots=True)
class Usage:
    """Token counts of one response."""

    input_tokens: int
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        }


@dataclass(slots=True)
class ResponseShell:
    """What a response echoes of its request; ``body`` makes the object at any status."""

    req: ResponseRequest
    model: str
    tool_choice: Any
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=now)

    def body(
        self,
        status: str,
        output: list[dict[str, Any]] | None = None,
        usage: Usage | None = None,
        finish_reason: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The response object; ``finish_reason`` "length" makes it incomplete."""
        req = self.req
        output = output or []
        incomplete = None
        if status == "completed" and finish_reason == "length":
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        fmt = req.text.format if req.text is not None and req.text.format is not None else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": req.background,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "max_tool_calls": req.max_tool_calls,
            "model": self.model,
            "output": output,
            "output_text": output_text(output),
            "parallel_tool_calls": req.parallel_tool_calls,
            "previous_response_id": req.previous_response_id,
            "reasoning": req.reasoning.model_dump() if req.reasoning else {"effort": None, "summary": None},
            "store": req.store,
            "temperature": req.temperature,
            "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
            "tool_choice": self.tool_choice,
            "tools": req.tools or [],
            "top_p": req.top_p,
            "truncation": req.truncation,
            "usage": usage.to_dict() if usage is not None else None,
            "user": req.user,
            "metadata": req.metadata or {},
        }
