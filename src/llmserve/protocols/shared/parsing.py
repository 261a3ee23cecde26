"""Request bodies: JSON -> a pydantic model, with one readable 400 for every mistake."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from llmserve.errors import InvalidRequestError

M = TypeVar("M", bound=BaseModel)
# Deeper JSON is refused before decoding: Python's decoder and pydantic recurse once per level.
MAX_NESTING = 64
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
log = logging.getLogger("llmserve.protocols")


async def parse_body(model_cls: type[M]) -> M:
    """Read the current Quart request's JSON body into ``model_cls``.

    Malformed JSON, a non-object body and schema violations raise InvalidRequestError (400) whose
    ``param`` names the offending top-level field.
    """
    from quart import request

    raw = await request.get_data(cache=True)
    return parse_json(raw, model_cls)


def parse_json(raw: bytes | str, model_cls: type[M]) -> M:
    """Like ``parse_body`` for bytes already read (also handy in tests)."""
    if not raw or not raw.strip():
        raise InvalidRequestError("The request body is empty; expected a JSON object.")
    if _nesting(raw) > MAX_NESTING:
        raise InvalidRequestError(f"The request body is nested more than {MAX_NESTING} levels deep.")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(f"The request body must be a JSON object, got {type(data).__name__}.")
    return validate_model(model_cls, data)


def _nesting(raw: bytes | str) -> int:
    """How deep the JSON text's arrays and objects nest (brackets inside strings not counted)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if data.count(b"[") + data.count(b"{") <= MAX_NESTING:  # the common case, in C
        return 0
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKET)
    depth = deepest = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _reject_constant(name: str) -> None:
    # Python's json accepts NaN and Infinity; JSON (and every sampling parameter) does not.
    raise InvalidRequestError(f"The request body is not valid JSON: {name} is not a JSON value")


def validate_model(model_cls: type[M], data: dict[str, Any]) -> M:
    """``model_cls`` from a decoded JSON object; any mistake is one readable 400. Unknown
    top-level fields are ignored (real clients send many) and logged at debug level."""
    if log.isEnabledFor(logging.DEBUG):
        unknown = sorted(set(data) - set(model_cls.model_fields))
        if unknown:
            log.debug("%s: ignoring unknown fields %s", model_cls.__name__, ", ".join(unknown))
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
    except InvalidRequestError:
        raise
    except (ValueError, TypeError) as exc:  # raised by a validator outside pydantic's wrapping
        raise InvalidRequestError(str(exc)) from None


def validation_error(exc: ValidationError) -> InvalidRequestError:
    """One readable 400 from a pydantic ValidationError; ``param`` is the first bad top-level field."""
    errors = exc.errors(include_url=False)
    parts: list[str] = []
    param = None
    for err in errors:
        loc = [part for part in err.get("loc", ()) if not _is_union_tag(part)]
        path = _format_loc(loc)
        if param is None and loc:
            param = str(loc[0])
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        line = f"{path}: {msg}" if path else msg
        if line not in parts:
            parts.append(line)
    shown = parts[:3]
    if len(parts) > 3:
        shown.append(f"and {len(parts) - 3} more")
    return InvalidRequestError("Invalid request: " + "; ".join(shown), param=param)


def _is_union_tag(part: object) -> bool:
    # pydantic puts the tried union member's type name in ``loc`` ("str", "list[int]", ...).
    return isinstance(part, str) and (
        "[" in part or part in {"str", "int", "float", "bool", "dict", "list", "none"} or "-" in part
    )


def _format_loc(loc: Sequence[object]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
