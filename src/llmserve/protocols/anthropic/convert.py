"""An Anthropic conversation -> what the chat template and the engine take: OpenAI-style messages
(assistant ``tool_calls``, ``tool`` messages), OpenAI function tools, the tool choice in the
pipeline's terms, the output constraint it implies and the template kwargs."""

from __future__ import annotations

import json
from typing import Any

from llmserve.api import InvalidRequestError, StructuredOutputs, UnsupportedError, calls_schema
from llmserve.protocols.anthropic import schemas as s

# Claude Code's first system block changes on every request; templating it defeats the prefix cache.
BILLING_HEADER = "x-anthropic-billing-header:"


def system_prompt(req: s.CountTokensRequest) -> str:
    """The system text: the ``system`` field (billing-header blocks dropped), then inline
    ``system`` messages, in order."""
    parts: list[str] = []
    if isinstance(req.system, str):
        parts.append(req.system)
    elif req.system:
        parts += [b.text for b in req.system if not b.text.lstrip().startswith(BILLING_HEADER)]
    for msg in req.messages:
        if msg.role == "system":
            parts += _texts(msg.content, "system")
    return "\n\n".join(p for p in parts if p)


def openai_messages(req: s.CountTokensRequest) -> list[dict[str, Any]]:
    """The conversation as OpenAI chat messages, for ``render_chat``."""
    out: list[dict[str, Any]] = []
    system = system_prompt(req)
    if system:
        out.append({"role": "system", "content": system})
    for i, msg in enumerate(req.messages):
        if msg.role == "user":
            out += _user(msg.content, i)
        elif msg.role == "assistant":
            out.append(_assistant(msg.content, i))
    if not any(m["role"] != "system" for m in out):
        raise InvalidRequestError(
            "messages: at least one user or assistant message is needed", param="messages"
        )
    return out


def _user(content: str | list, i: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    texts: list[str] = []

    def flush() -> None:
        if texts:
            out.append({"role": "user", "content": "\n\n".join(texts)})
            texts.clear()

    for block in content:
        if isinstance(block, s.ToolResultBlock):
            flush()
            result = "\n\n".join(_texts(block.content, f"messages[{i}] tool_result"))
            if block.is_error:
                result = f"Error: {result}"
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": result})
        elif isinstance(block, s.TextBlock):
            texts.append(block.text)
        else:
            _refuse_media(block, i)  # thinking / tool_use have no place in a user turn: skipped
    flush()
    return out


def _assistant(content: str | list, i: int) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, s.TextBlock):
            texts.append(block.text)
        elif isinstance(block, s.ThinkingBlock):
            reasoning.append(block.thinking)
        elif isinstance(block, s.ToolUseBlock):
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append(
                {"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}}
            )
        else:
            _refuse_media(block, i)  # redacted thinking: nothing readable to pass back
    message: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts)}
    if reasoning:
        message["reasoning_content"] = "\n\n".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return message


def _texts(content: Any, where: str) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    texts = []
    for block in content:
        if isinstance(block, s.TextBlock):
            texts.append(block.text)
        else:
            _refuse_media(block, where)
    return texts


def _refuse_media(block: Any, where: int | str) -> None:
    if isinstance(block, s.ImageBlock | s.DocumentBlock):
        place = f"messages[{where}]" if isinstance(where, int) else where
        raise UnsupportedError(
            f"{place}: '{block.type}' blocks are not supported: the served model does not take "
            f"{block.type} input",
            param="messages",
        )


# --- tools -------------------------------------------------------------------------------------


def openai_tools(req: s.CountTokensRequest) -> list[dict[str, Any]] | None:
    """The client tools as OpenAI function tools (server tools left out), or None."""
    tools = []
    for tool in req.tools or []:
        if tool.input_schema is None and tool.type not in (None, "custom"):
            continue  # a server tool (web search, code execution): nothing here runs it
        schema = dict(tool.input_schema or {})
        schema.setdefault("type", "object")
        function: dict[str, Any] = {"name": tool.name, "parameters": schema}
        if tool.description:
            function["description"] = tool.description
        tools.append({"type": "function", "function": function})
    return tools or None


def tool_choice(req: s.CountTokensRequest, tools: list[dict[str, Any]] | None) -> str | dict[str, Any]:
    """``tool_choice`` in the parser pipeline's terms: "auto", "none", "required" or a named function."""
    choice = req.tool_choice
    if not tools or choice is None or choice.type == "auto":
        return "auto" if tools else "none"
    if choice.type == "none":
        return "none"
    if choice.type == "any":
        return "required"
    if not choice.name:
        raise InvalidRequestError("tool_choice.name: required when type is 'tool'", param="tool_choice")
    if not any(t["function"]["name"] == choice.name for t in tools):
        raise InvalidRequestError(
            f"tool_choice.name: no tool named {choice.name!r} in tools", param="tool_choice"
        )
    return {"type": "function", "function": {"name": choice.name}}


def parallel_calls(req: s.CountTokensRequest) -> bool:
    """Whether more than one tool call may be made."""
    return not (req.tool_choice is not None and req.tool_choice.disable_parallel_tool_use)


def constraint_spec(
    req: s.CountTokensRequest, tools: list[dict[str, Any]] | None, choice: str | dict[str, Any]
) -> StructuredOutputs | None:
    """What the output must follow: the named tool's input schema, one or more calls for "any",
    or ``output_config.format``'s schema; None when the output is free."""
    fmt = req.output_config.format if req.output_config else None
    if choice in ("auto", "none"):
        return StructuredOutputs(json=fmt.schema_) if fmt is not None else None
    if fmt is not None:
        raise InvalidRequestError(
            "output_config.format cannot be used with a forced tool_choice: the tool's input_schema "
            "already constrains the output",
            param="output_config",
        )
    functions = [t["function"] for t in tools or []]
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        return StructuredOutputs(json=next(f["parameters"] for f in functions if f["name"] == name))
    return StructuredOutputs(json=calls_schema(functions, None if parallel_calls(req) else 1))


def template_kwargs(req: s.CountTokensRequest) -> dict[str, Any]:
    """``enable_thinking`` from ``thinking`` (templates that do not know it ignore it)."""
    if req.thinking is None:
        return {}
    return {"enable_thinking": req.thinking.type != "disabled"}


def reasoning_effort(req: s.CountTokensRequest) -> str | None:
    """``output_config.effort``, passed to the template as ``reasoning_effort``."""
    return req.output_config.effort if req.output_config else None


def thinking_budget(req: s.MessagesRequest) -> int | None:
    """``thinking.budget_tokens`` when thinking is ``enabled``: the reasoning ends after that many
    tokens. Anthropic's rules, except that budgets under 1,024 are allowed (small local models)."""
    thinking = req.thinking
    if thinking is None or thinking.type != "enabled":
        return None
    if thinking.budget_tokens is None:
        raise InvalidRequestError(
            "thinking.budget_tokens: Field required when thinking is enabled", param="thinking"
        )
    if thinking.budget_tokens < 1:
        raise InvalidRequestError("thinking.budget_tokens: must be at least 1", param="thinking")
    if thinking.budget_tokens >= req.max_tokens:
        raise InvalidRequestError(
            "`max_tokens` must be greater than `thinking.budget_tokens`", param="thinking"
        )
    return thinking.budget_tokens
