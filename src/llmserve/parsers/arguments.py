"""Arguments written as separate parameters (XML-like tags, Python keywords) turned into JSON
text that only grows: each finished parameter is appended, a string parameter streams as it is
written, and ``}`` closes the object when the call ends."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any


def param_type(schema: dict[str, Any], key: str) -> str | None:
    """The JSON-schema type of parameter ``key`` (the first of a list of types), or None."""
    kind = (schema.get("properties") or {}).get(key, {}).get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    return kind if isinstance(kind, str) else None


def convert(value: str, kind: str | None) -> Any:
    """A parameter's text as the value its schema type asks for (text the type does not fit,
    or no type at all, is read as JSON or a Python literal where it parses, else kept as text)."""
    if kind == "string":
        return value
    text = value.strip()
    if kind in ("integer", "number"):
        try:
            number = float(text)
            return int(number) if kind == "integer" and number.is_integer() else number
        except ValueError:
            return value
    if kind == "boolean" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    for read in (json.loads, ast.literal_eval):
        try:
            return read(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return value


def dumps(value: Any) -> str:
    """JSON text as sent to clients: non-ASCII kept as is."""
    return json.dumps(value, ensure_ascii=False)


@dataclass(slots=True)
class Param:
    """One parameter as far as it is written: its key, its text, whether it is finished, and
    whether its text is a string to stream before it finishes."""

    key: str
    text: str
    done: bool
    streams: bool = False
    value: Any = None  # the value itself, when the format wrote a literal (``literal``)
    literal: bool = False


def object_text(params: list[Param], kinds: dict[str, Any] | None = None, closed: bool = False) -> str:
    """JSON object text for ``params`` so far: finished ones converted (by ``kinds``' schema),
    an unfinished streaming string as far as written, ``}`` once ``closed``."""
    schema = kinds or {}
    parts = []
    for param in params:
        if param.done or closed:  # a call cut short keeps its last parameter as far as written
            if param.literal:
                value = param.value
            elif param.streams:
                value = param.text
            else:
                value = convert(param.text, param_type(schema, param.key))
            parts.append(f"{dumps(param.key)}: {dumps(value)}")
        elif param.streams:
            parts.append(f"{dumps(param.key)}: {dumps(param.text)[:-1]}")
            break
        else:
            break
    return "{" + ", ".join(parts) + ("}" if closed else "")
