"""Calls written as a Python list of calls with keyword arguments:
``[get_weather(city="Paris", unit='celsius'), get_time()]`` (Llama 3.2, Llama 4, ToolACE...).
Argument values are Python literals; each streams as JSON once written."""

from __future__ import annotations

import ast
import re

from llmserve.parsers.arguments import Param, object_text
from llmserve.parsers.base import PartialCall, Section, ToolParser
from llmserve.parsers.json_calls import close_after, skip_ws
from llmserve.parsers.markers import could_start

_CALL = re.compile(r"([A-Za-z_][\w.\-]*)\s*\(")
_KEY = re.compile(r"([A-Za-z_]\w*)\s*=(?!=)")
_PARTIAL_NAME = re.compile(r"[A-Za-z_][\w.\-]*\s*\Z")


def _value_end(text: str, pos: int) -> int | None:
    """Index of the ``,`` or ``)`` that ends the Python expression at ``text[pos:]``, or None."""
    depth, quote, i = 0, "", pos
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                return i
            depth -= 1
        elif ch == "," and depth == 0:
            return i
        i += 1
    return None


class PythonicToolParser(ToolParser):
    """A Python list of calls opening the output (vLLM's ``pythonic``)."""

    opener = ""  # a marker before the list; the list itself opens the output when empty
    closer = ""

    def find_start(self, text: str, final: bool) -> tuple[int, int, int]:
        first = skip_ws(text, 0)
        rest = text[first:]
        if not self.at_start or not rest:
            return -1, 0, 0 if final or not self.at_start else len(text)
        if rest.startswith("["):
            return first, 0, 0
        if self.opener and rest.startswith(self.opener):
            return first, len(self.opener), 0
        if self.opener and could_start(rest, self.opener) and not final:
            return -1, 0, len(text)
        return -1, 0, 0

    def parse_section(self, text: str, final: bool) -> Section:
        pos = skip_ws(text, self.marker_len)
        if pos >= len(text):
            return Section(failed=final)
        if text[pos] != "[":
            return Section(failed=True)
        calls: list[PartialCall] = []
        pos += 1
        while True:
            pos = skip_ws(text, pos)
            rest = text[pos:]
            if rest.startswith("]"):
                end = pos + 1
                if self.closer:
                    end = close_after(text, end, self.closer, final)
                return Section(calls, end, failed=not calls)
            match = _CALL.match(text, pos)
            if match is None:
                if not final and (not rest or _PARTIAL_NAME.match(rest)):
                    return Section(calls)
                return Section(calls, pos, failed=True)
            call, pos = self._call(text, match, final)
            calls.append(call)
            if pos is None or not call.done:
                return Section(calls, pos)
            pos = skip_ws(text, pos)
            if text.startswith(",", pos):
                pos += 1
            elif pos < len(text) and text[pos] != "]":
                return Section(calls, pos)

    def _call(self, text: str, match: re.Match, final: bool) -> tuple[PartialCall, int | None]:
        name = match.group(1)
        params: list[Param] = []
        pos = match.end()
        while True:
            pos = skip_ws(text, pos)
            if text.startswith(")", pos):
                return PartialCall(name, object_text(params, closed=True), True), pos + 1
            key = _KEY.match(text, pos)
            if key is None:
                if not final and (pos >= len(text) or re.match(r"[A-Za-z_]\w*\s*\Z", text[pos:])):
                    return PartialCall(name, object_text(params)), None
                return PartialCall(name, object_text(params, closed=True), True), pos
            end = _value_end(text, key.end())
            if end is None:
                if final:
                    return PartialCall(name, object_text(params, closed=True), True), len(text)
                return PartialCall(name, object_text(params)), None
            try:
                value = ast.literal_eval(text[key.end() : end].strip())
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return PartialCall(name, object_text(params, closed=True), True), key.start()
            params.append(Param(key.group(1), "", True, value=value, literal=True))
            pos = end + 1 if text[end] == "," else end


class Llama4PythonicToolParser(PythonicToolParser):
    """Llama 4: the same Python list, optionally in ``<|python_start|>...<|python_end|>``."""

    opener = "<|python_start|>"
    closer = "<|python_end|>"
    needs_special_tokens = True
