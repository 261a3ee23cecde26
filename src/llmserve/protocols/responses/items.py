"""Input items: checked and given ids, then rendered as the chat messages a template reads.

A conversation is a list of items (messages, function calls and their outputs, reasoning); a
stored response keeps its items so ``previous_response_id`` can replay the whole exchange.
"""

from __future__ import annotations

import json
from typing import Any

from llmserve.api import InvalidRequestError, UnsupportedError
from llmserve.protocols.responses.output import new_id

_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")
_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def normalize_input(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's ``input`` as complete items with ids; a malformed item is a 400 naming it."""
    if isinstance(value, str):
        value = [{"type": "message", "role": "user", "content": value}]
    return [_normalize(item, i) for i, item in enumerate(value)]


def _normalize(item: dict[str, Any], i: int) -> dict[str, Any]:
    param = f"input[{i}]"
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in _ROLES:
            raise InvalidRequestError(f"{param}.role must be one of {', '.join(_ROLES)}", param="input")
        content = item.get("content")
        if isinstance(content, str):
            part = "output_text" if role == "assistant" else "input_text"
            content = [{"type": part, "text": content}]
        if not isinstance(content, list):
            raise InvalidRequestError(f"{param}.content must be a string or a list of parts", param="input")
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS:
                got = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise UnsupportedError(
                    f"{param}.content[{j}]: only text parts are supported, got {got!r}", param="input"
                )
            if not isinstance(part.get("text"), str):
                raise InvalidRequestError(f"{param}.content[{j}].text must be a string", param="input")
        out = {"type": "message", "role": role, "content": content}
        if role == "assistant":
            out["status"] = item.get("status") or "completed"
    elif kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            if not isinstance(item.get(key), str):
                raise InvalidRequestError(f"{param}.{key} must be a string", param="input")
        out = {k: item[k] for k in ("call_id", "name", "arguments")}
        out.update(type=kind, status=item.get("status") or "completed")
    elif kind == "function_call_output":
        output = item.get("output")
        if not isinstance(item.get("call_id"), str):
            raise InvalidRequestError(f"{param}.call_id must be a string", param="input")
        if isinstance(output, list):  # a list of text parts
            output = "".join(p.get("text", "") for p in output if isinstance(p, dict))
        if not isinstance(output, str):
            raise InvalidRequestError(f"{param}.output must be a string", param="input")
        out = {"type": kind, "call_id": item["call_id"], "output": output, "status": "completed"}
    elif kind == "reasoning":
        out = {
            "type": kind,
            "summary": list(item.get("summary") or []),
            "content": list(item.get("content") or []),
        }
    else:
        raise UnsupportedError(f"{param}: unsupported item type {kind!r}", param="input")
    out["id"] = item.get("id") or new_id(_PREFIX[kind])
    return out


def _text(parts: list[dict[str, Any]]) -> str:
    return "".join(part.get("text", "") for part in parts)


def to_messages(items: list[dict[str, Any]], instructions: str | None) -> list[dict[str, Any]]:
    """Chat messages for ``items``: function calls join the assistant turn they belong to,
    their outputs become tool messages, reasoning reaches the next assistant message as
    ``reasoning_content``."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    reasoning = ""
    for item in items:
        kind = item["type"]
        if kind == "reasoning":
            reasoning += _text(item.get("content") or item.get("summary") or [])
        elif kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            message: dict[str, Any] = {"role": role, "content": _text(item["content"])}
            if role == "assistant" and reasoning:
                message["reasoning_content"], reasoning = reasoning, ""
            messages.append(message)
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": _arguments(item["arguments"])},
            }
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant":
                last = {"role": "assistant", "content": ""}
                if reasoning:
                    last["reasoning_content"], reasoning = reasoning, ""
                messages.append(last)
            last.setdefault("tool_calls", []).append(call)
        else:  # function_call_output
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


def _arguments(text: str) -> Any:
    # Templates format arguments themselves and most expect an object.
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text
