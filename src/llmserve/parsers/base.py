"""Parser interfaces. Each parser instance serves one response and owns its streaming state."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = ""


@dataclass(slots=True)
class ParsedDelta:
    """What one streamed chunk of model text turned into."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


class ReasoningParser:
    """Splits model output into reasoning and content.

    Subclasses override ``extract`` (whole text) and ``feed`` (streaming). The base class treats
    everything as content. One instance per response; ``feed`` keeps whatever state it needs.
    ``end_marker``: the text that ends the reasoning (e.g. ``"</think>"``); when set, structured
    outputs constrain only what follows it.
    """

    end_marker: str | None = None

    def __init__(self, tokenizer=None) -> None:
        self.tokenizer = tokenizer

    def extract(self, text: str) -> tuple[str | None, str]:
        """Return (reasoning or None, content) for a complete output."""
        return None, text

    def feed(self, delta: str) -> ParsedDelta:
        """Consume the next piece of streamed text."""
        return ParsedDelta(content=delta)


class ToolParser:
    """Finds tool calls in model output.

    Subclasses override ``extract`` (whole text) and ``feed`` (streaming); the base class finds
    none. One instance per response; ``feed`` keeps whatever state it needs.
    """

    def __init__(self, tokenizer=None) -> None:
        self.tokenizer = tokenizer

    def extract(self, text: str) -> tuple[str, list[ToolCall]]:
        """Return (content without the calls, tool calls) for a complete output."""
        return text, []

    def feed(self, delta: str) -> ParsedDelta:
        """Consume the next piece of streamed text."""
        return ParsedDelta(content=delta)
