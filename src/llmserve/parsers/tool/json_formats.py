"""Tool-call formats that write each call as a JSON object ``{"name": ..., "arguments": ...}``
after a start marker (and sometimes before an end marker), or as bare JSON opening the output."""

from __future__ import annotations

import json

from llmserve.parsers.base import Section, ToolParser
from llmserve.parsers.json_calls import call_sequence, close_after, skip_ws
from llmserve.parsers.markers import could_start, locate


class JsonCallsToolParser(ToolParser):
    """Calls as JSON objects (alone, in sequence or in an array) after one of ``formats``'s
    start markers, each mapped to its end marker (None: the calls end the section).
    ``bare``: JSON opening the output (after whitespace) is a call too."""

    formats: dict[str, str | None] = {}
    bare = False
    separators = ",;"

    @property
    def start_markers(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.formats)

    def find_start(self, text: str, final: bool) -> tuple[int, int, int]:
        if self.bare and self.at_start:
            first = skip_ws(text, 0)
            if first == len(text):
                return -1, 0, 0 if final else len(text)
            rest = text[first:]
            if not final and any(could_start(rest, m) and len(rest) < len(m) for m in self.formats):
                return -1, 0, len(text)  # maybe a marker opening the output
            if text[first] in "{[" and not any(rest.startswith(m) for m in self.formats):
                return first, 0, 0
        index, marker, hold = locate(text, self.formats, final)
        return index, len(marker), hold

    def parse_section(self, text: str, final: bool) -> Section:
        marker = text[: self.marker_len]
        calls, end, failed = call_sequence(self, text, self.marker_len, final, self.separators)
        if end is None or failed:
            return Section(calls, end, failed)
        closing = self.formats.get(marker)
        if closing:
            return Section(calls, close_after(text, end, closing, final))
        return Section(calls, end)


class HermesToolParser(JsonCallsToolParser):
    """Hermes 2/3, Qwen2.5, QwQ: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``."""

    formats = {"<tool_call>": "</tool_call>"}

    def call_frame(self, name: str) -> tuple[str, str, str] | None:
        if type(self).formats != HermesToolParser.formats:
            return None  # a subclass with other markers
        return "<tool_call>", f'<tool_call>\n{{"name": {json.dumps(name)}, "arguments": ', "}\n</tool_call>"


class Granite4ToolParser(HermesToolParser):
    """Granite 4.0: one ``<tool_call>{...}</tool_call>`` per call, as Hermes."""


class GraniteToolParser(JsonCallsToolParser):
    """Granite 3.x: ``<|tool_call|>[{"name": ..., "arguments": {...}}, ...]`` (3.0 wrote
    ``<tool_call>`` without a closing tag)."""

    formats = {"<|tool_call|>": None, "<tool_call>": None}
    needs_special_tokens = True


class InternLMToolParser(JsonCallsToolParser):
    """InternLM 2/2.5: ``<|action_start|><|plugin|>\\n{"name": ..., "parameters": {...}}<|action_end|>``."""

    formats = {"<|action_start|><|plugin|>": "<|action_end|>"}
    needs_special_tokens = True


class Phi4MiniToolParser(JsonCallsToolParser):
    """Phi-4-mini: ``functools[{"name": ..., "arguments": {...}}, ...]``."""

    formats = {"functools": None}


class Llama3JsonToolParser(JsonCallsToolParser):
    """Llama 3.1/3.2/3.3 JSON calls: ``{"name": ..., "parameters": {...}}`` opening the output,
    optionally after ``<|python_tag|>``, several separated by ``;``."""

    formats = {"<|python_tag|>": None}
    bare = True
    separators = ";"
    needs_special_tokens = True

    def find_start(self, text: str, final: bool) -> tuple[int, int, int]:
        first = skip_ws(text, 0)
        rest = text[first:]
        if not self.at_start or (rest and rest[0] not in "{[" and not could_start(rest, "<|python_tag|>")):
            return -1, 0, 0  # only the output's start can be a call
        return super().find_start(text, final)


class XLamToolParser(JsonCallsToolParser):
    """xLAM: a JSON array of calls, bare or in a ```json fence, after ``[TOOL_CALLS]`` or in
    ``<tool_call>`` tags."""

    formats = {"```json": "```", "```": "```", "[TOOL_CALLS]": None, "<tool_call>": "</tool_call>"}
    bare = True
