"""Formats with a marker for every part of a call: a section of calls, each call's begin, its
header (name, sometimes an id) and JSON arguments, its end (DeepSeek V3/V3.1/R1, Kimi K2)."""

from __future__ import annotations

from llmserve.parsers.base import PartialCall, Section, ToolParser
from llmserve.parsers.json_calls import arguments_at, close_after, skip_ws
from llmserve.parsers.markers import could_start


class MarkedCallsToolParser(ToolParser):
    """A section ``start_markers[0]`` ... ``section_end`` of calls
    ``call_begin HEADER header_end ARGUMENTS call_end``; ``header`` reads (name, id)."""

    call_begin = ""
    header_end = ""
    call_end = ""
    section_end = ""
    needs_special_tokens = True

    def header(self, text: str) -> tuple[str, str | None] | None:
        """(name, the model's call id or None) from a call's header, None if it is not one."""
        name = text.strip()
        return (name, None) if name and "\n" not in name else None

    def parse_section(self, text: str, final: bool) -> Section:
        calls: list[PartialCall] = []
        pos = self.marker_len
        while True:
            pos = skip_ws(text, pos)
            rest = text[pos:]
            if rest.startswith(self.section_end):
                return Section(calls, pos + len(self.section_end))
            if not rest.startswith(self.call_begin):
                if not final and (could_start(rest, self.section_end) or could_start(rest, self.call_begin)):
                    return Section(calls)
                return Section(calls, pos if rest or not final else len(text), failed=not calls)
            head = pos + len(self.call_begin)
            index = text.find(self.header_end, head)
            if index < 0:
                return Section(calls) if not final else Section(calls, pos, failed=not calls)
            header = self.header(text[head:index])
            if header is None:
                return Section(calls, pos, failed=not calls)
            start = index + len(self.header_end)
            arguments, done, error = arguments_at(self, text, start, final)
            calls.append(PartialCall(header[0], arguments, done, header[1]))
            if not done:
                return Section(calls)
            scan = self.json_at(text, start, final)
            if error is not None or scan.done is None:
                return Section(calls, len(text) if error is None else error)
            end = close_after(text, scan.done, self.call_end, final)
            if end is None:
                return Section(calls)
            pos = end


class DeepSeekV3ToolParser(MarkedCallsToolParser):
    """DeepSeek V3 and R1: ``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
    \\n```json\\n{...}\\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>``."""

    start_markers = ("<｜tool▁calls▁begin｜>",)
    call_begin = "<｜tool▁call▁begin｜>"
    header_end = "```json"
    call_end = "```<｜tool▁call▁end｜>"
    section_end = "<｜tool▁calls▁end｜>"

    def header(self, text: str) -> tuple[str, str | None] | None:
        kind, sep, name = text.partition("<｜tool▁sep｜>")
        return super().header(name) if sep and kind.strip() == "function" else None


class DeepSeekV31ToolParser(MarkedCallsToolParser):
    """DeepSeek V3.1: ``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}
    <｜tool▁call▁end｜><｜tool▁calls▁end｜>``."""

    start_markers = ("<｜tool▁calls▁begin｜>",)
    call_begin = "<｜tool▁call▁begin｜>"
    header_end = "<｜tool▁sep｜>"
    call_end = "<｜tool▁call▁end｜>"
    section_end = "<｜tool▁calls▁end｜>"


class KimiK2ToolParser(MarkedCallsToolParser):
    """Kimi K2: ``<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0
    <|tool_call_argument_begin|>{...}<|tool_call_end|><|tool_calls_section_end|>``; the header
    is the call's id."""

    start_markers = ("<|tool_calls_section_begin|>", "<|tool_call_section_begin|>")
    call_begin = "<|tool_call_begin|>"
    header_end = "<|tool_call_argument_begin|>"
    call_end = "<|tool_call_end|>"
    section_end = "<|tool_calls_section_end|>"

    def header(self, text: str) -> tuple[str, str | None] | None:
        call_id = text.strip()
        name = call_id.removeprefix("functions.").rpartition(":")
        name = name[0] if name[1] and name[2].isdigit() else call_id.removeprefix("functions.")
        return (name, call_id) if name and "\n" not in name else None
