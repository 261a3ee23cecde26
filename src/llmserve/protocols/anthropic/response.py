"""One answer's wire facts: content blocks, stop reason and usage, for whole and streamed answers."""

from __future__ import annotations

import json
from typing import Any

from llmserve.api import CompletionOutput, ParserPipeline, RequestOutput, ToolCall
from llmserve.protocols.anthropic.errors import anthropic_id
from llmserve.protocols.anthropic.signature import sign


class Answer:
    """What one /v1/messages request reports; ``pipeline`` parses reasoning and tool calls."""

    def __init__(
        self,
        message_id: str,
        model: str,
        prompt_tokens: int,
        pipeline: ParserPipeline,
        stop_sequences: list[str] | None,
        signing_key: bytes = b"",
    ) -> None:
        self.id, self.model, self.prompt_tokens = message_id, model, prompt_tokens
        self.signing_key = signing_key  # signs thinking blocks (signature.py)
        self.pipeline = pipeline
        self.stop_sequences = stop_sequences or []
        self.cached = 0  # prompt tokens the prefix cache supplied
        self.output_tokens = 0
        self.tool_ids: dict[int, str] = {}  # call index -> toolu_ id

    def tool_id(self, index: int) -> str:
        """The ``toolu_...`` id of tool call ``index`` (made on first use)."""
        if index not in self.tool_ids:
            self.tool_ids[index] = anthropic_id("toolu")
        return self.tool_ids[index]

    def usage(self) -> dict[str, Any]:
        """Anthropic's usage: ``input_tokens`` are those not read from the cache."""
        return {
            "input_tokens": self.prompt_tokens - self.cached,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.cached,
            "output_tokens": self.output_tokens,
            "service_tier": "standard",
        }

    def stop(self, choice: CompletionOutput, called: bool) -> tuple[str, str | None]:
        """(stop_reason, stop_sequence) of a finished choice."""
        if choice.finish_reason == "length":
            return "max_tokens", None
        if called:
            return "tool_use", None
        if isinstance(choice.stop_reason, str) and choice.stop_reason in self.stop_sequences:
            return "stop_sequence", choice.stop_reason
        return "end_turn", None

    def message(self, content: list[dict[str, Any]], stop: tuple[str | None, str | None]) -> dict[str, Any]:
        """The message object (``message_start`` carries it with no content and no stop reason)."""
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop[0],
            "stop_sequence": stop[1],
            "usage": self.usage(),
        }

    def whole(self, result: RequestOutput) -> dict[str, Any]:
        """A non-streaming answer from the request's final output."""
        choice = result.outputs[0]
        self.cached = result.num_cached_tokens
        self.output_tokens = max(choice.num_output_tokens, len(choice.token_ids))
        parsed = self.pipeline.extract(choice.text)
        content: list[dict[str, Any]] = []
        if parsed.reasoning:
            signature = sign(self.signing_key, parsed.reasoning)
            content.append({"type": "thinking", "thinking": parsed.reasoning, "signature": signature})
        if parsed.content:
            content.append({"type": "text", "text": parsed.content})
        for i, call in enumerate(parsed.tool_calls):
            content.append(self.tool_use(i, call))
        return self.message(content, self.stop(choice, bool(parsed.tool_calls)))

    def tool_use(self, index: int, call: ToolCall) -> dict[str, Any]:
        """A ``tool_use`` block; arguments cut short (max_tokens) give an empty input."""
        return {
            "type": "tool_use",
            "id": self.tool_id(index),
            "name": call.name,
            "input": tool_input(call.arguments),
        }


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as an object ({} when they are not a complete JSON object)."""
    try:
        value = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
