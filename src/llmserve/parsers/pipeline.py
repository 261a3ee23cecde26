"""Reasoning -> tools for one response choice.

The reasoning parser sees the model's text first; only its content reaches the tool parser, so a
call written inside the reasoning is never a tool call. ``tool_choice`` decides how calls are
read: ``"none"`` reads none; ``"auto"`` uses the server's tool parser; ``"required"`` and a named
function read what structured outputs made the model write (a JSON array of
``{"name", "parameters"}`` objects; the named function's arguments object), whatever the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmserve.parsers.base import ParsedDelta, PartialCall, ReasoningParser, Section, ToolCall, ToolParser
from llmserve.parsers.json_calls import arguments_at, call_sequence, skip_ws


class _Forced(ToolParser):
    """The whole output is calls (tool_choice required or named): it starts at the first text."""

    def find_start(self, text: str, final: bool) -> tuple[int, int, int]:
        first = skip_ws(text, 0)
        if not self.at_start or (first == len(text) and final):
            return -1, 0, 0
        return (first, 0, 0) if first < len(text) else (-1, 0, len(text))


class NamedCallParser(_Forced):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``: the output is that
    function's arguments."""

    def __init__(self, tokenizer=None, *, tools=None, name: str = "") -> None:
        super().__init__(tokenizer, tools=tools)
        self.name = name

    def parse_section(self, text: str, final: bool) -> Section:
        arguments, done, error = arguments_at(self, text, 0, final)
        if error == 0:
            return Section(failed=True)
        scan = self.json_at(text, 0, final)
        if scan.done is not None:
            end = scan.done
        elif done:
            end = len(text) if error is None else error
        else:
            end = None
        return Section([PartialCall(self.name, arguments, done)], end)


class RequiredCallsParser(_Forced):
    """``tool_choice: "required"``: the output is a JSON array of calls."""

    def parse_section(self, text: str, final: bool) -> Section:
        calls, end, failed = call_sequence(self, text, 0, final)
        return Section(calls, end, failed)


@dataclass(slots=True)
class ParsedOutput:
    """A whole response choice, parsed: content (None when empty), reasoning (None when the
    model did not reason) and the tool calls."""

    content: str | None
    reasoning: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)


class ParserPipeline:
    """Reasoning -> tools for one choice; one instance per choice, streaming or not.

    ``feed(delta)`` and ``finish()`` return ``ParsedDelta``s to send (content, reasoning and
    tool-call deltas in OpenAI's shape: the first delta of call i has its index, id and name,
    later ones its index and more arguments); ``extract(text)`` parses a whole output. After
    ``finish``, ``tool_calls`` holds the complete calls and ``finish_reason(...)`` the reason to
    report. ``parallel_tool_calls=False`` keeps only the first call. ``request_tools`` (the
    request's tools) matter for ``required`` and named choices when no tool parser is given."""

    def __init__(
        self,
        reasoning: ReasoningParser | None = None,
        tools: ToolParser | None = None,
        *,
        tool_choice: str | dict[str, Any] | None = "auto",
        parallel_tool_calls: bool = True,
        request_tools: list[dict[str, Any]] | None = None,
    ) -> None:
        self.reasoning_parser = reasoning
        tokenizer = getattr(tools, "tokenizer", None)
        request_tools = request_tools if request_tools is not None else getattr(tools, "tools", None)
        if tool_choice == "none":
            tools = None
        elif tool_choice == "required":
            tools = RequiredCallsParser(tokenizer, tools=request_tools)
        elif isinstance(tool_choice, dict):
            name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name", "")
            tools = NamedCallParser(tokenizer, tools=request_tools, name=name)
        self.tool_parser = tools
        self.parallel_tool_calls = parallel_tool_calls
        self.content = ""
        self.reasoning = ""
        self._finished = False

    @property
    def needs_special_tokens(self) -> bool:
        """Whether the text must be detokenized with ``skip_special_tokens=False``."""
        return any(
            p is not None and p.needs_special_tokens for p in (self.reasoning_parser, self.tool_parser)
        )

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The calls completed so far (all of them after ``finish``)."""
        calls = self.tool_parser.calls if self.tool_parser is not None else []
        return calls if self.parallel_tool_calls else calls[:1]

    def feed(self, delta: str) -> ParsedDelta:
        """Consume the next piece of the choice's text; return what can be sent now."""
        if self.reasoning_parser is None:
            return self._tools(ParsedDelta(content=delta), final=False)
        return self._tools(self.reasoning_parser.feed(delta), final=False)

    def finish(self) -> ParsedDelta:
        """The choice ended (stop, length or abort): return whatever was held back."""
        if self._finished:
            return ParsedDelta()
        self._finished = True
        first = self.reasoning_parser.finish() if self.reasoning_parser is not None else ParsedDelta()
        return self._tools(first, final=True)

    def extract(self, text: str) -> ParsedOutput:
        """Parse a whole output (non-streaming responses)."""
        self.feed(text)
        self.finish()
        return ParsedOutput(self.content or None, self.reasoning or None, list(self.tool_calls))

    def finish_reason(self, reason: str | None) -> str | None:
        """The finish reason to report: ``tool_calls`` when calls were made (unless cut by length)."""
        return "tool_calls" if self.tool_calls and reason != "length" else reason

    def _tools(self, delta: ParsedDelta, final: bool) -> ParsedDelta:
        out = ParsedDelta(reasoning=delta.reasoning)
        if self.tool_parser is None:
            out.content = delta.content
        else:
            out.add(self.tool_parser.feed(delta.content) if delta.content else ParsedDelta())
            if final:
                out.add(self.tool_parser.finish())
        if not self.parallel_tool_calls:
            out.tool_calls = [d for d in out.tool_calls if d.index == 0]
        self.content += out.content
        self.reasoning += out.reasoning
        return out
