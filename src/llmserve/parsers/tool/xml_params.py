"""Formats that write each argument in its own tags: Qwen3-Coder's ``<function=...>`` with
``<parameter=...>`` and GLM-4.5/4.7's ``<arg_key>``/``<arg_value>``. Values are converted by the
request's tool schema; string values stream as written."""

from __future__ import annotations

import re

from llmserve.parsers.arguments import Param, object_text, param_type
from llmserve.parsers.base import PartialCall, Section, ToolParser
from llmserve.parsers.json_calls import skip_ws
from llmserve.parsers.markers import could_start, find_first, partial_suffix

_FUNCTION = re.compile(r"<function=([^>\n]*)>")
_PARAMETER = re.compile(r"<parameter=([^>\n]*)>")
_NAME = re.compile(r"[\w.\-:]+")
_VALUE_ENDS = ("</parameter>", "<parameter=", "</function>", "</tool_call>")


def _value(text: str, start: int, ends: tuple[str, ...], final: bool) -> tuple[str, int | None, str]:
    """(value text, index where it ends or None while open, the end marker found)."""
    index, marker = find_first(text, ends, start)
    if index >= 0:
        return text[start:index], index, marker
    stop = len(text) if final else len(text) - partial_suffix(text[start:], ends)
    return text[start:stop], (len(text) if final else None), ""


def _open_tag(rest: str, *tags: str) -> bool:
    return any(could_start(rest, tag) and ">" not in rest for tag in tags)


class Qwen3CoderToolParser(ToolParser):
    """Qwen3-Coder: ``<tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>\\n
    </function>\\n</tool_call>`` (one newline around each value is markup)."""

    start_markers = ("<tool_call>",)

    def parse_section(self, text: str, final: bool) -> Section:
        calls: list[PartialCall] = []
        pos = self.marker_len
        while True:
            pos = skip_ws(text, pos)
            rest = text[pos:]
            if rest.startswith("</tool_call>"):
                return Section(calls, pos + len("</tool_call>"))
            match = _FUNCTION.match(text, pos)
            if match is None:
                if not final and (_open_tag(rest, "<function=") or could_start(rest, "</tool_call>")):
                    return Section(calls, None)
                return Section(calls, pos, failed=not calls)
            call, pos = self._function(text, match, final)
            calls.append(call)
            if pos is None:
                return Section(calls, None)
            if not call.done:
                return Section(calls, pos)

    def _function(self, text: str, match: re.Match, final: bool) -> tuple[PartialCall, int | None]:
        name = match.group(1).strip()
        schema = self.tool_schema(name)
        params: list[Param] = []
        pos = match.end()
        while True:
            pos = skip_ws(text, pos)
            if text.startswith("</function>", pos):
                return PartialCall(name, object_text(params, schema, True), True), pos + len("</function>")
            param = _PARAMETER.match(text, pos)
            if param is None:
                rest = text[pos:]
                if not final and (_open_tag(rest, "<parameter=") or could_start(rest, "</function>")):
                    return PartialCall(name, object_text(params, schema)), None
                # a broken call ends here; the text after it is content
                return PartialCall(name, object_text(params, schema, True), True), (
                    len(text) if final else pos
                )
            key = param.group(1).strip()
            value, end, marker = _value(text, param.end(), _VALUE_ENDS, final)
            value = value[1:] if value.startswith("\n") else value
            if end is None:
                value = value[:-1] if value.endswith("\n") else value  # may be the closing newline
            elif value.endswith("\n"):
                value = value[:-1]
            streams = param_type(schema, key) == "string"
            params.append(Param(key, value, end is not None, streams))
            if end is None:
                return PartialCall(name, object_text(params, schema)), None
            pos = end + (len(marker) if marker == "</parameter>" else 0)


class Qwen3XmlToolParser(Qwen3CoderToolParser):
    """Qwen3-Coder's XML format under vLLM's second name for it."""


class Glm45ToolParser(ToolParser):
    """GLM-4.5/4.6: ``<tool_call>NAME\\n<arg_key>KEY</arg_key>\\n<arg_value>VALUE</arg_value>\\n
    </tool_call>``; GLM-4.7 writes the same without the newlines."""

    start_markers = ("<tool_call>",)

    def parse_section(self, text: str, final: bool) -> Section:
        start = self.marker_len
        ends = ("\n", "<arg_key>", "</tool_call>")
        index, marker = find_first(text, ends, start)
        if index < 0 and not final:
            written = text[start : len(text) - partial_suffix(text[start:], ends)]
            return Section() if _NAME.fullmatch(written.strip() or "x") else Section(failed=True)
        name = text[start : index if index >= 0 else len(text)].strip()
        if not _NAME.fullmatch(name):
            return Section(failed=True)
        schema = self.tool_schema(name)
        params: list[Param] = []
        pos = index + (1 if marker == "\n" else 0)
        while True:
            pos = skip_ws(text, pos)
            rest = text[pos:]
            if rest.startswith("</tool_call>"):
                return Section([PartialCall(name, object_text(params, schema, True), True)], pos + 12)
            open_call = Section([PartialCall(name, object_text(params, schema))])
            closed = Section([PartialCall(name, object_text(params, schema, True), True)], pos)
            key_end = text.find("</arg_key>", pos)
            if not rest.startswith("<arg_key>") or key_end < 0:
                if not final and (could_start(rest, "<arg_key>") or could_start(rest, "</tool_call>")):
                    return open_call
                return closed
            key = text[pos + len("<arg_key>") : key_end].strip()
            pos = skip_ws(text, key_end + len("</arg_key>"))
            rest = text[pos:]
            if not rest.startswith("<arg_value>"):
                if not final and could_start(rest, "<arg_value>"):
                    return open_call
                return closed
            value, end, _ = _value(text, pos + len("<arg_value>"), ("</arg_value>",), final)
            value = value.strip()  # an unfinished value's trailing whitespace may not last either
            params.append(Param(key, value, end is not None, param_type(schema, key) == "string"))
            if end is None:
                return Section([PartialCall(name, object_text(params, schema))])
            pos = end + len("</arg_value>")


class Glm47ToolParser(Glm45ToolParser):
    """GLM-4.7: GLM-4.5's tags with no newlines between them."""
