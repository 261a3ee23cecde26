"""The parser interface: one instance per response choice, owning its streaming state.

A ``ReasoningParser`` splits model text into reasoning and content; a ``ToolParser`` finds tool
calls in content. Both are built with the tokenizer (tool parsers also with the request's tools),
take text with ``feed(delta) -> ParsedDelta`` while streaming, are closed with ``finish()``, and
answer a whole output with ``extract(text)``. Every decision depends on the text so far, never
on where the chunks were cut, so any chunking gives the same result as ``extract``.
``llmserve.parsers.pipeline.ParserPipeline`` composes reasoning -> tools for one choice.

Tool parsers share a streaming engine: a subclass names its ``start_markers`` (or overrides
``find_start``) and implements ``parse_section(text, final)``, a function of the section's text
so far (from the start marker on) that returns the calls it shows. The engine emits content
before a section (holding back only a possible partial marker), turns growing calls into
OpenAI-style deltas, and sends text a section does not claim back to content.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from llmserve.parsers.json_scan import JsonScan
from llmserve.parsers.markers import locate


@dataclass(slots=True)
class ToolCall:
    """One complete tool call: the function's name and its arguments as JSON text."""

    name: str
    arguments: str  # JSON text, exactly as streamed
    id: str = ""
    type: str = "function"

    def to_dict(self) -> dict[str, Any]:
        """The call as an OpenAI message's ``tool_calls`` item."""
        return {
            "id": self.id,
            "type": self.type,
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of call ``index``: the first carries id and name, later ones only arguments."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The delta as an OpenAI stream chunk's ``delta.tool_calls`` item."""
        if self.name is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        function = {"name": self.name, "arguments": self.arguments}
        return {"index": self.index, "id": self.id, "type": "function", "function": function}


@dataclass(slots=True)
class ParsedDelta:
    """What one piece of model text turned into: content, reasoning and tool-call deltas."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.tool_calls)

    def add(self, other: ParsedDelta) -> ParsedDelta:
        """Append ``other`` to this delta (in place) and return it."""
        self.content += other.content
        self.reasoning += other.reasoning
        self.tool_calls.extend(other.tool_calls)
        return self


@dataclass(slots=True)
class PartialCall:
    """A call as far as a section's text shows it (what ``ToolParser.parse_section`` returns).

    ``arguments`` must only grow from one parse to the next; ``done`` marks them final. ``id``
    is the model's own call id where the format has one."""

    name: str
    arguments: str = ""
    done: bool = False
    id: str | None = None


@dataclass(slots=True)
class Section:
    """One parse of a tool-call section: its calls and where it ends.

    ``end``: index in the section text just past the section (None while it is still open).
    ``failed``: the text from ``end`` on (from the start when no call was found) cannot be a
    call; the engine returns it to content."""

    calls: list[PartialCall] = field(default_factory=list)
    end: int | None = None
    failed: bool = False


class ReasoningParser:
    """Splits model output into reasoning and content.

    Built per response as ``cls(tokenizer, chat_template_kwargs=...)``: the kwargs the chat
    template got (``enable_thinking``, ``thinking``) tell whether the model reasons at all.
    Subclasses override ``feed`` and ``finish`` (the base treats everything as content);
    ``extract`` runs them over a whole output. Set ``needs_special_tokens`` when the markers
    are special tokens, so the caller detokenizes with ``skip_special_tokens=False``.
    """

    needs_special_tokens = False
    end_marker: str | None = None  # the text that ends the reasoning; structured outputs start after it

    def __init__(self, tokenizer: Any = None, *, chat_template_kwargs: dict[str, Any] | None = None) -> None:
        self.tokenizer = tokenizer
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    def feed(self, delta: str) -> ParsedDelta:
        """Consume the next piece of streamed text; return what can be sent now."""
        return ParsedDelta(content=delta)

    def finish(self) -> ParsedDelta:
        """The output ended: return whatever was held back."""
        return ParsedDelta()

    def extract(self, text: str) -> tuple[str | None, str]:
        """Return (reasoning or None, content) for a complete output."""
        out = self.feed(text).add(self.finish())
        return (out.reasoning or None), out.content


class ToolParser:
    """Finds tool calls in model content.

    Built per response as ``cls(tokenizer, tools=request_tools)`` (OpenAI tool dicts; parsers
    that convert argument types read their JSON schemas). ``feed``/``finish`` stream;
    ``extract`` answers a whole output with (content, calls). The base finds no calls until a
    subclass names ``start_markers`` and implements ``parse_section``.
    """

    start_markers: tuple[str, ...] = ()
    needs_special_tokens = False

    def __init__(self, tokenizer: Any = None, *, tools: list[dict[str, Any]] | None = None) -> None:
        self.tokenizer = tokenizer
        self.tools = list(tools or [])
        self._buffer = ""  # text not yet decided
        self._section: str | None = None  # the open section's text, from its start marker
        self.marker_len = 0  # length of the open section's start marker (its body follows)
        self._scans: dict[int, JsonScan] = {}
        self._calls: list[tuple[int, PartialCall, int]] = []  # (index, call, arguments sent) this section
        self._count = 0
        self._ids = f"chatcmpl-tool-{secrets.token_hex(8)}"  # vLLM's id prefix
        self._started = False  # any non-whitespace content or section seen
        self._after_section = False  # whitespace after a section is dropped unless text follows
        self.calls: list[ToolCall] = []  # every call completed so far, in order

    # --- what subclasses provide ------------------------------------------------------------

    def find_start(self, text: str, final: bool) -> tuple[int, int, int]:
        """(start of the first section or -1, its marker's length, length of a trailing partial
        marker to hold back). The default looks for ``start_markers`` anywhere."""
        index, marker, hold = locate(text, self.start_markers, final)
        return index, len(marker), hold

    def parse_section(self, text: str, final: bool) -> Section:
        """Parse a section's text so far (``final``: the output ended here)."""
        return Section(end=0, failed=True)

    def call_frame(self, name: str) -> tuple[str, str, str] | None:
        """(trigger, text before the arguments, text after them) of one call to ``name`` in this
        format, the before-text starting with the trigger; None when the format has no such
        frame. With it, ``tool_choice: "auto"`` constrains the arguments of ``strict`` tools
        once the model opens a call (an xgrammar structural tag)."""
        return None

    @property
    def at_start(self) -> bool:
        """Whether nothing but whitespace came before (for formats that only start an output)."""
        return not self._started

    def json_at(self, text: str, start: int, final: bool = False) -> JsonScan:
        """The JSON scan of the value at ``text[start:]``, advanced over ``text`` (cached per
        section, so a growing section is scanned once)."""
        scan = self._scans.get(start)
        if scan is None:
            scan = self._scans[start] = JsonScan(start)
        return scan.advance(text, final)

    def tool_schema(self, name: str) -> dict[str, Any]:
        """The JSON schema of the parameters of the request's tool ``name`` (empty if unknown)."""
        for tool in self.tools:
            function = tool.get("function", tool)
            if function.get("name") == name:
                return function.get("parameters") or {}
        return {}

    # --- the streaming engine ---------------------------------------------------------------

    def feed(self, delta: str) -> ParsedDelta:
        """Consume the next piece of streamed text; return what can be sent now."""
        self._buffer += delta
        return self._drain(final=False)

    def finish(self) -> ParsedDelta:
        """The output ended: close an open call gracefully and return what was held back."""
        return self._drain(final=True)

    def extract(self, text: str) -> tuple[str, list[ToolCall]]:
        """Return (content without the calls, tool calls) for a complete output."""
        out = self.feed(text).add(self.finish())
        return out.content, list(self.calls)

    def _drain(self, final: bool) -> ParsedDelta:
        out = ParsedDelta()
        while True:
            if self._section is None:
                start, marker_len, hold = self.find_start(self._buffer, final)
                if start < 0:
                    cut = len(self._buffer) - hold
                    if self._after_section and not final and not self._buffer[:cut].strip():
                        return out  # whitespace after a call waits to see what follows it
                    self._content(self._buffer[:cut], out)
                    self._buffer = self._buffer[cut:]
                    return out
                self._content(self._buffer[:start], out)
                self._section, self._buffer = self._buffer[start:], ""
                self.marker_len, self._scans, self._calls = marker_len, {}, []
                self._started = True
            else:
                self._section += self._buffer
                self._buffer = ""
            text = self._section
            section = self.parse_section(text, final)
            self._emit(section.calls, out)
            if section.end is None and not final:
                return out
            end = len(text) if section.end is None else section.end
            if not self._calls and (section.failed or end <= 0):
                end = max(self.marker_len, 1)  # not a call after all: the marker is content, rescan the rest
                self._content(text[:end], out)
            self._close_calls()
            self._section = None
            self._buffer = text[end:]
            self._after_section = bool(self._calls)
            if final and not self._buffer:
                return out

    def _content(self, text: str, out: ParsedDelta) -> None:
        if not text.strip():
            if not self._after_section:  # whitespace between calls, or after the last, is dropped
                out.content += text
            return
        self._after_section = False
        self._started = True
        out.content += text

    def _emit(self, calls: list[PartialCall], out: ParsedDelta) -> None:
        for position, call in enumerate(calls):
            if position == len(self._calls):
                index = self._count
                self._count += 1
                self._calls.append((index, call, 0))
                delta = ToolCallDelta(index, id=call.id or f"{self._ids}_{index}", name=call.name)
                out.tool_calls.append(delta)
            index, first, sent = self._calls[position]
            if call.name != first.name or not call.arguments.startswith(first.arguments[:sent]):
                continue  # a parser must only extend a call; ignore anything else
            new = call.arguments[sent:]
            self._calls[position] = (index, call, len(call.arguments))
            if new:
                if out.tool_calls and out.tool_calls[-1].index == index:
                    out.tool_calls[-1].arguments += new
                else:
                    out.tool_calls.append(ToolCallDelta(index, arguments=new))

    def _close_calls(self) -> None:
        for index, call, sent in self._calls:
            arguments = call.arguments[:sent]
            self.calls.append(ToolCall(call.name, arguments, call.id or f"{self._ids}_{index}"))
