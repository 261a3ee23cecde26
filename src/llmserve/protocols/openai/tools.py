"""tool_choice checks (vLLM's rules and messages), the output constraint a tool choice implies,
and the seam where tool calls are taken out of generated text.

A named tool choice constrains the output to that function's ``parameters`` schema and turns the
whole output into its arguments; "required" constrains it to a JSON list of one or more
``{"name", "parameters"}`` objects (``required_calls``). Parsing free-form output for "auto"
belongs to the tool-parser plugins (``--tool-call-parser``); ``extract_tool_calls`` and
``ToolCallStream`` are where they plug in. A parser whose format has begin/end markers would
give "required" a structural tag in its own format instead of the JSON list (``tool_constraint``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from llmserve.api import InvalidRequestError, StructuredOutputs, calls_schema

if TYPE_CHECKING:
    from llmserve.api import Config
    from llmserve.protocols.openai.schemas import ChatCompletionRequest

_USAGE = 'Correct usage: `{"type": "function", "function": {"name": "my_function"}}`'


def effective_tool_choice(req: ChatCompletionRequest, config: Config) -> str | dict[str, Any]:
    """ "none", "auto", "required" or the named-function dict; raises 400 for vLLM's invalid cases."""
    choice = req.tool_choice
    if "tool_choice" not in req.model_fields_set and req.tools:
        choice = "auto"  # OpenAI's default when tools are given
    if choice is None or choice == "none":
        return "none"
    if req.tools is None:
        raise InvalidRequestError("When using `tool_choice`, `tools` must be set.", param="tool_choice")
    if choice == "required" and not req.tools:
        return "none"
    if isinstance(choice, dict):
        function = choice.get("function")
        if not isinstance(function, dict):
            raise InvalidRequestError(
                f"Invalid value for `function`: `{function}` in `tool_choice`! {_USAGE}", param="tool_choice"
            )
        if "name" not in function:
            raise InvalidRequestError(
                f"Expected field `name` in `function` in `tool_choice`! {_USAGE}", param="tool_choice"
            )
        name = function["name"]
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(
                f"Invalid `name` in `function`: `{name}` in `tool_choice`! {_USAGE}", param="tool_choice"
            )
        if not any(tool.function.name == name for tool in req.tools):
            raise InvalidRequestError(
                "The tool specified in `tool_choice` does not match any of the specified `tools`",
                param="tool_choice",
            )
        return choice
    if choice == "auto" and not (config.enable_auto_tool_choice and config.tool_call_parser):
        raise InvalidRequestError(
            '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
            param="tool_choice",
        )
    return choice


def tool_constraint(
    req: ChatCompletionRequest, tool_choice: str | dict[str, Any]
) -> StructuredOutputs | None:
    """What the output must follow for ``tool_choice``: the named function's parameters, or for
    "required" an array of calls; None for "none" and "auto". Combined with structured_outputs or
    a response_format this is a 400, as in vLLM (both would constrain the same text)."""
    if tool_choice in ("none", "auto"):
        return None
    fmt = req.response_format
    for name, value in (("structured_outputs", req.structured_outputs), ("response_format", fmt)):
        if value is not None and not (name == "response_format" and value.get("type", "text") == "text"):
            raise InvalidRequestError(
                f"{name} cannot be used with tool_choice {_choice_name(tool_choice)}: the tool's "
                "parameters already constrain the output",
                param=name,
            )
    functions = [tool.function.model_dump(exclude_none=True) for tool in req.tools or []]
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        function = next(f for f in functions if f["name"] == name)
        return StructuredOutputs(json=function.get("parameters") or {"type": "object"})
    return StructuredOutputs(json=calls_schema(functions, 1 if req.parallel_tool_calls is False else None))


def framed_calls_constraint(req: ChatCompletionRequest, parser: Any) -> StructuredOutputs | None:
    """For "required": one or more calls written in the tool parser's own format (each call's
    arguments following its tool's schema), when the parser has a frame for every tool; None
    otherwise (the calls are then a JSON list, ``tool_constraint``)."""
    tools = req.tools or []
    frames = [parser.call_frame(tool.function.name) for tool in tools] if parser is not None else []
    if not frames or any(frame is None for frame in frames):
        return None
    tags = [
        {"type": "tag", "begin": begin, "end": end,
         "content": {"type": "json_schema", "json_schema": tool.function.parameters or {"type": "object"}}}
        for tool, (_, begin, end) in zip(tools, frames, strict=True)
    ]  # fmt: skip
    calls = {"type": "tags_with_separator", "tags": tags, "separator": "\n", "at_least_one": True,
             "stop_after_first": req.parallel_tool_calls is False}  # fmt: skip
    return StructuredOutputs(structural_tag=json.dumps({"type": "structural_tag", "format": calls}))


def strict_tools_constraint(req: ChatCompletionRequest, parser: Any) -> StructuredOutputs | None:
    """For "auto" with a ``strict: true`` tool: once the model opens a call in the tool parser's
    format, its arguments follow that tool's schema (other tools' arguments: any object). None
    without strict tools; a 400 when the parser's format cannot be constrained or another
    output constraint is asked for too."""
    tools = req.tools or []
    if not any(tool.function.strict for tool in tools):
        return None
    frames = [parser.call_frame(tool.function.name) for tool in tools] if parser is not None else [None]
    if any(frame is None for frame in frames):
        raise InvalidRequestError(
            "strict tools with tool_choice 'auto' need a tool-call parser whose format can be "
            "constrained (--tool-call-parser hermes)",
            param="tools",
        )
    for name in ("structured_outputs", "response_format"):
        value = getattr(req, name)
        if value is not None and not (name == "response_format" and value.get("type", "text") == "text"):
            raise InvalidRequestError(
                f"{name} cannot be used with strict tools under tool_choice 'auto'", param=name
            )
    structures = [
        {
            "begin": begin,
            "schema": (tool.function.parameters or {"type": "object"})
            if tool.function.strict
            else {"type": "object"},
            "end": end,
        }
        for tool, (_, begin, end) in zip(tools, frames, strict=True)
    ]
    triggers = sorted({trigger for trigger, _, _ in frames})
    return StructuredOutputs(structural_tag=json.dumps({"structures": structures, "triggers": triggers}))


def _choice_name(tool_choice: str | dict[str, Any]) -> str:
    return f"{tool_choice['function']['name']!r}" if isinstance(tool_choice, dict) else f"{tool_choice!r}"
