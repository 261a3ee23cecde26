"""Calls written as JSON objects: ``{"name": ..., "arguments": {...}}``, alone, in sequence or
in a JSON array. The arguments stream as the model writes them (their raw text, non-ASCII as
is); the call appears once its name is complete and its arguments have begun."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from llmserve.parsers.base import PartialCall
from llmserve.parsers.markers import could_start

if TYPE_CHECKING:
    from llmserve.parsers.base import ToolParser

NAME_KEYS = ("name",)
ARGUMENT_KEYS = ("arguments", "parameters")
_WS = re.compile(r"\s*")


def skip_ws(text: str, pos: int) -> int:
    """The index of the first non-whitespace character at or after ``pos``."""
    return _WS.match(text, pos).end()


def arguments_at(parser: ToolParser, text: str, start: int, final: bool) -> tuple[str, bool, int | None]:
    """(arguments so far, done, error index) of the JSON value at ``text[start:]``.

    Arguments written as a JSON string holding JSON are unwrapped once complete (never
    streamed, since their text changes when unwrapped). Cut off, they are closed as JSON."""
    scan = parser.json_at(text, start, final)
    if scan.value_start is not None and text[scan.value_start] == '"':
        if scan.done is None:
            return ("{}" if final else ""), final, scan.error
        value = json.loads(text[scan.value_start : scan.done])
        try:
            json.loads(value)
        except ValueError:
            value = json.dumps(value, ensure_ascii=False)
        return value, True, None
    if scan.done is not None:
        return text[scan.value_start : scan.done], True, None
    if final or scan.error is not None:
        return scan.closed(text) or "{}", True, scan.error
    return scan.sent(text), False, None


def call_object(
    parser: ToolParser, text: str, pos: int, final: bool, name_keys=NAME_KEYS, argument_keys=ARGUMENT_KEYS
) -> tuple[PartialCall | None, int | None, bool]:
    """The call in the JSON object at ``text[pos:]``: (call so far or None, index past it or
    None while open, failed). A broken object after the call began ends the call there."""
    scan = parser.json_at(text, pos, final)
    if scan.value_start is not None and text[scan.value_start] != "{":
        return None, None, True
    name = scan.string_member(text, *name_keys)
    span = scan.member(*argument_keys)
    if name is not None and span is not None and span[0] is not None:
        arguments, done, _ = arguments_at(parser, text, span[0], final)
        if scan.done is not None:
            return PartialCall(name, arguments, True), scan.done, False
        if scan.error is not None or final:
            arguments, _, _ = arguments_at(parser, text, span[0], True)
            return PartialCall(name, arguments, True), len(text) if scan.error is None else scan.error, False
        return PartialCall(name, arguments, False), None, False
    if scan.done is not None and name is not None and span is None and _known(parser, name):
        return PartialCall(name, "{}", True), scan.done, False
    if scan.finished or final:
        return None, None, True
    return None, None, False


def _known(parser: ToolParser, name: str) -> bool:
    names = {tool.get("function", tool).get("name") for tool in parser.tools}
    return not names or name in names


def call_sequence(
    parser: ToolParser, text: str, pos: int, final: bool, separators: str = ",;", allow_list: bool = True
) -> tuple[list[PartialCall], int | None, bool]:
    """The JSON calls from ``text[pos:]``: one object, several separated by ``separators`` or
    whitespace, or a JSON array of them. Returns (calls, index past the last, or None while more
    may come, failed): ``failed`` means the text at that index is not a call."""
    calls: list[PartialCall] = []
    pos = skip_ws(text, pos)
    in_list = allow_list and text.startswith("[", pos)
    if in_list:
        pos = skip_ws(text, pos + 1)
    end = pos
    while True:
        if pos >= len(text):
            return calls, (end if final else None), final and (in_list or not calls)
        ch = text[pos]
        if in_list and ch == "]" and (calls or pos == end):
            return calls, pos + 1, not calls
        if ch != "{":
            return calls, (pos if in_list else end), in_list or not calls
        call, past, failed = call_object(parser, text, pos, final)
        if failed:
            return calls, pos, True
        if call is not None:
            calls.append(call)
        if past is None:
            return calls, None, False
        end = past
        pos = skip_ws(text, past)
        if pos < len(text) and text[pos] in (separators if not in_list else ","):
            pos = skip_ws(text, pos + 1)
        elif in_list and pos < len(text) and text[pos] != "]":
            return calls, pos, True


def close_after(text: str, pos: int, marker: str, final: bool) -> int | None:
    """Where a section ends when ``marker`` should follow ``text[pos:]`` after whitespace: past
    the marker; None while it may still come; ``pos`` when it will not (a missing end marker)."""
    rest = text[skip_ws(text, pos) :]
    if rest.startswith(marker):
        return len(text) - len(rest) + len(marker)
    if not final and could_start(rest, marker):
        return None
    return pos
