"""An incremental scanner of one JSON value in growing text.

It validates the text as it arrives and records, for a top-level object, where each member's
value starts and ends, so a parser can stream a call's arguments while they are generated:
``text[start:safe]`` may be sent at any time, and ``safe`` only moves forward; appending
``closer`` to it always gives valid JSON (how a call cut off by ``max_tokens`` is closed).
Raw control characters inside strings are let through, as ``json.loads(strict=False)`` does.
"""

from __future__ import annotations

import json
import re
from typing import Any

_WS = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"(?:[^"\\]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')
_PARTIAL_STRING = re.compile(r'"(?:[^"\\]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*(\\(?:u[0-9a-fA-F]{0,3})?)?\Z')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_PARTIAL_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)?(?:\.[0-9]*)?(?:[eE][+-]?[0-9]*)?\Z")
_LITERALS = ("true", "false", "null")
_CLOSE = {"{": "}", "[": "]"}

VALUE, VALUE_OR_END, KEY, KEY_OR_END, COLON, COMMA_OR_END = range(6)


class JsonScan:
    """Scan of the JSON value that starts at ``text[start:]`` (leading whitespace allowed).

    Call ``advance(text)`` with the same text grown further each time. Results: ``done`` (index
    just past the value) or ``error`` (index of the first character that cannot belong to it);
    ``safe`` and ``closer`` (see the module doc); ``members``: for an object, one
    ``[key, value_start, value_end]`` per top-level member (ends None while unfinished)."""

    def __init__(self, start: int = 0) -> None:
        self.start = start
        self.pos = start
        self.value_start: int | None = None
        self.stack: list[str] = []
        self.expect = VALUE
        self.done: int | None = None
        self.error: int | None = None
        self.safe = start
        self.closer = ""
        self.members: list[list[Any]] = []

    @property
    def finished(self) -> bool:
        """Whether the scan stopped (value complete or invalid)."""
        return self.done is not None or self.error is not None

    def advance(self, text: str, final: bool = False) -> JsonScan:
        """Scan ``text`` from where the last call stopped; returns self."""
        while not self.finished:
            pos = _WS.match(text, self.pos).end()
            self.pos = pos
            if pos >= len(text):
                return self
            ch, expect = text[pos], self.expect
            if expect in (KEY, KEY_OR_END):
                if ch == "}" and expect == KEY_OR_END:
                    self._close(pos)
                elif ch == '"':
                    match = _STRING.match(text, pos)
                    if match is None:
                        if not _PARTIAL_STRING.match(text, pos):
                            self.error = pos
                        return self
                    if len(self.stack) == 1:
                        self.members.append([json.loads(match.group()), None, None])
                    self.pos, self.expect = match.end(), COLON
                else:
                    self.error = pos
            elif expect == COLON:
                if ch != ":":
                    self.error = pos
                self.pos, self.expect = pos + 1, VALUE
            elif expect == COMMA_OR_END:
                if ch == ",":
                    self.pos, self.expect = pos + 1, KEY if self.stack[-1] == "{" else VALUE
                elif ch == _CLOSE[self.stack[-1]]:
                    self._close(pos)
                else:
                    self.error = pos
            elif ch == "]" and expect == VALUE_OR_END:
                self._close(pos)
            else:
                self._value(text, pos, final)
                if self.pos == pos and not self.finished:
                    return self  # a partial token: wait for more text
        return self

    def _value(self, text: str, pos: int, final: bool) -> None:
        if self.value_start is None:
            self.value_start = pos
        if len(self.stack) == 1 and self.stack[0] == "{" and self.members:
            self.members[-1][1] = pos
        ch = text[pos]
        if ch in "{[":
            self.stack.append(ch)
            self.pos, self.expect = pos + 1, KEY_OR_END if ch == "{" else VALUE_OR_END
            self._mark_safe(pos + 1)
        elif ch == '"':
            match = _STRING.match(text, pos)
            if match is not None:
                self._complete(match.end())
            elif (partial := _PARTIAL_STRING.match(text, pos)) is not None:
                held = len(partial.group(1) or "")  # a half-written escape is not sent yet
                self._mark_safe(len(text) - held, '"')
            else:
                self.error = pos
        elif ch == "-" or ch.isdigit():
            if not final and _PARTIAL_NUMBER.match(text, pos):
                return  # the number may go on
            match = _NUMBER.match(text, pos)
            if match is None:
                self.error = pos
            else:
                self._complete(match.end())
        else:
            for literal in _LITERALS:
                if text.startswith(literal, pos):
                    self._complete(pos + len(literal))
                    return
                if literal.startswith(text[pos : pos + len(literal)]) and len(text) - pos < len(literal):
                    if final:
                        self.error = pos
                    return
            self.error = pos

    def _complete(self, end: int) -> None:
        self.pos = end
        if not self.stack:
            self.done = end
            self._mark_safe(end)
            return
        if len(self.stack) == 1 and self.stack[0] == "{" and self.members:
            self.members[-1][2] = end
        self.expect = COMMA_OR_END
        self._mark_safe(end)

    def _close(self, pos: int) -> None:
        self.stack.pop()
        self._complete(pos + 1)

    def _mark_safe(self, index: int, prefix: str = "") -> None:
        self.safe = max(self.safe, index)
        self.closer = prefix + "".join(_CLOSE[c] for c in reversed(self.stack))

    def member(self, *keys: str) -> tuple[int | None, int | None] | None:
        """(value start, value end) of the first top-level member named one of ``keys``."""
        for key, value_start, value_end in self.members:
            if key in keys:
                return value_start, value_end
        return None

    def string_member(self, text: str, *keys: str) -> str | None:
        """The value of a finished top-level string member named one of ``keys``."""
        span = self.member(*keys)
        if span is None or span[1] is None:
            return None
        value = json.loads(text[span[0] : span[1]])
        return value if isinstance(value, str) else None

    def sent(self, text: str) -> str:
        """The value's text that can be sent now (from its first character to ``safe``)."""
        begin = self.value_start if self.value_start is not None else self.safe
        return text[begin : max(begin, self.safe)]

    def closed(self, text: str) -> str:
        """The value's text closed as valid JSON: the value itself when done, else what was
        sent plus ``closer`` (empty when nothing could be sent)."""
        if self.done is not None:
            return text[self.value_start : self.done]
        sent = self.sent(text)
        return sent + self.closer if sent else ""
