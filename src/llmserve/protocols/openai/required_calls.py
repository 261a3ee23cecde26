"""Tool calls written as a JSON array ``[{"name": ..., "parameters": {...}}, ...]``: the format a
``required`` tool choice constrains the output to when no tool parser brings its own.

``RequiredCallStream`` turns the text as it streams into OpenAI tool-call deltas: each call's
name as soon as its string closes, then its arguments as they grow. It scans every character once,
tracking only nesting and strings, so it needs the output to be that JSON (the constraint makes
sure of it), not any JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

_ARGUMENT_KEYS = ("parameters", "arguments")


class RequiredCallStream:
    """Text deltas of a JSON array of calls -> tool-call deltas (``index``, name first).

    ``make_call(name, arguments)`` builds the first delta of a call (its id and name).
    """

    def __init__(self, make_call: Callable[[str, str], dict[str, Any]]) -> None:
        self.make_call = make_call
        self.depth = 0
        self.in_string = self.escaped = False
        self.index = -1
        self.expect_key = False
        self.key: str | None = None  # the key whose value is being read, in the current call
        self.capture: list[str] | None = None  # the key or name string being read
        self.capturing: str | None = None  # "key" | "name"
        self.in_args = False
        self.args_started = False
        self.named = False
        self.pending_args: list[str] = []  # arguments seen before the name (kept until it comes)

    def feed(self, text: str) -> list[dict[str, Any]]:
        """The tool-call deltas ``text`` completes (possibly none)."""
        out: list[dict[str, Any]] = []
        args: list[str] = []
        for char in text:
            self._char(char, out, args)
        self._flush(out, args)
        return out

    def _flush(self, out: list[dict[str, Any]], args: list[str]) -> None:
        if not args:
            return
        if not self.named:
            self.pending_args.extend(args)
        else:
            out.append({"index": self.index, "function": {"arguments": "".join(args)}})
        args.clear()

    def _char(self, char: str, out: list[dict[str, Any]], args: list[str]) -> None:
        if self.in_string:
            if self.in_args:
                args.append(char)
            if self.capture is not None:
                self.capture.append(char)
            if self.escaped:
                self.escaped = False
            elif char == "\\":
                self.escaped = True
            elif char == '"':
                self.in_string = False
                if self.in_args and self.depth == 2:
                    self.in_args = False  # a string value ended
                self._string_done(out, args)
            return
        if self.in_args and self.depth == 2:  # the value's own level: a scalar, or what ends it
            if char in ",}":
                self.in_args = False
            elif char.isspace():
                return  # around the value, not part of it
        if self.in_args:
            self.args_started = True
            args.append(char)
        if char == '"':
            self.in_string = True
            if self.depth == 2 and self.expect_key:
                self.capture, self.capturing = ['"'], "key"
            elif self.depth == 2 and self.key == "name" and not self.in_args:
                self.capture, self.capturing = ['"'], "name"
        elif char in "{[":
            self.depth += 1
            if self.depth == 2 and char == "{":  # a new call object in the array
                self._flush(out, args)
                self.index += 1
                self.expect_key, self.key, self.named = True, None, False
                self.pending_args = []
        elif char in "}]":
            self.depth -= 1
            if self.in_args and self.depth == 2:
                self.in_args = False  # an object or array value ended
        elif char == ":" and self.depth == 2:
            self.expect_key = False
            if self.key in _ARGUMENT_KEYS:
                self.in_args, self.args_started = True, False
        elif char == "," and self.depth == 2:
            self.expect_key, self.key = True, None

    def _string_done(self, out: list[dict[str, Any]], args: list[str]) -> None:
        if self.capture is None:
            return
        value = json.loads("".join(self.capture))
        if self.capturing == "key":
            self.key = value
        elif self.capturing == "name":
            self._flush(out, args)
            out.append({"index": self.index, **self.make_call(str(value), "")})
            self.named = True
            if self.pending_args:
                out.append({"index": self.index, "function": {"arguments": "".join(self.pending_args)}})
                self.pending_args = []
        self.capture = self.capturing = None


def required_schema(tools: list[dict[str, Any]], parallel_tool_calls: bool | None) -> dict[str, Any]:
    """The JSON schema of one or more calls of ``tools`` (OpenAI function dicts), as vLLM builds it:
    an array of ``{"name": one tool's name, "parameters": that tool's parameters}``. Each tool's
    ``$defs`` move to the top so its local references still resolve."""
    defs: dict[str, Any] = {}
    options = []
    for tool in tools:
        params = dict(tool.get("parameters") or {"type": "object", "properties": {}})
        for name, value in (params.pop("$defs", None) or {}).items():
            if name in defs and defs[name] != value:
                raise ValueError(f"tools define $defs/{name} differently")
            defs[name] = value
        options.append(
            {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": [tool["name"]]}, "parameters": params},
                "required": ["name", "parameters"],
            }
        )
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": options}}
    if parallel_tool_calls is False:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema
