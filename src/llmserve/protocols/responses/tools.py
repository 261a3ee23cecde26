"""Function tools, ``tool_choice`` and ``text.format``: what the output may be and how it is read.

"required" and a named function are enforced by structured outputs, as on the chat route: the
output is constrained to a JSON list of ``{"name", "parameters"}`` calls (what
``ParserPipeline(tool_choice="required")`` reads), or to the named function's parameters.
"""

from __future__ import annotations

from typing import Any

from llmserve.api import Config, InvalidRequestError, StructuredOutputs, UnsupportedError, calls_schema
from llmserve.protocols.responses.schemas import ResponseRequest


def function_tools(req: ResponseRequest) -> list[dict[str, Any]]:
    """The request's tools in the chat shape (``{"type": "function", "function": {...}}``);
    a built-in tool type is a 400."""
    tools = []
    for i, tool in enumerate(req.tools or []):
        kind = tool.get("type")
        if kind != "function":
            raise UnsupportedError(
                f"tools[{i}]: tool type {kind!r} is not supported; only 'function' tools are",
                param="tools",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(f"tools[{i}].name must be a non-empty string", param="tools")
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidRequestError(f"tools[{i}].parameters must be a JSON schema object", param="tools")
        function = {"name": name, "parameters": parameters or {"type": "object", "properties": {}}}
        if tool.get("description"):
            function["description"] = tool["description"]
        tools.append({"type": "function", "function": function})
    return tools


def tool_choice(req: ResponseRequest, tools: list[dict[str, Any]], config: Config) -> str | dict[str, Any]:
    """ "none", "auto", "required" or ``{"type": "function", "function": {"name": ...}}``.

    An explicit "auto" needs the server's tool parser; when tool_choice is left out, tools
    without a parser leave the output as plain text (OpenAI's default is "auto")."""
    choice = req.tool_choice
    if not tools or choice == "none":
        if choice not in (None, "none", "auto"):
            raise InvalidRequestError("tool_choice needs `tools`", param="tool_choice")
        return "none"
    if choice is None:
        return "auto" if config.tool_call_parser else "none"
    if choice == "auto":
        if not config.tool_call_parser:
            raise InvalidRequestError(
                'tool_choice "auto" requires the server to run with --tool-call-parser', param="tool_choice"
            )
        return "auto"
    if choice == "required":
        return "required"
    if isinstance(choice, dict):
        if choice.get("type") != "function":
            raise UnsupportedError(
                f"tool_choice type {choice.get('type')!r} is not supported; use a function",
                param="tool_choice",
            )
        name = choice.get("name")
        if not any(t["function"]["name"] == name for t in tools):
            raise InvalidRequestError(f"tool_choice names no tool in `tools`: {name!r}", param="tool_choice")
        return {"type": "function", "function": {"name": name}}
    raise InvalidRequestError(f"invalid tool_choice {choice!r}", param="tool_choice")


def constraint(
    req: ResponseRequest, tools: list[dict[str, Any]], choice: str | dict[str, Any]
) -> StructuredOutputs | None:
    """What the output must follow: the tool choice's calls, or ``text.format``'s JSON."""
    fmt = req.text.format if req.text is not None else None
    wants_json = fmt is not None and fmt.type != "text"
    if choice in ("none", "auto"):
        return _text_format(fmt) if wants_json else None
    if wants_json:
        raise InvalidRequestError(
            "text.format cannot be used with a required or named tool_choice: the tools constrain the output",
            param="text.format",
        )
    functions = [t["function"] for t in tools]
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        return StructuredOutputs(json=next(f["parameters"] for f in functions if f["name"] == name))
    single = not req.parallel_tool_calls or req.max_tool_calls == 1
    return StructuredOutputs(json=calls_schema(functions, req.max_tool_calls or (1 if single else None)))


def _text_format(fmt) -> StructuredOutputs:
    if fmt.type == "json_object":
        return StructuredOutputs(json_object=True)
    if fmt.schema_ is None:
        raise InvalidRequestError("text.format json_schema needs a `schema`", param="text.format")
    return StructuredOutputs(json=fmt.schema_)
