"""Anthropic Messages API request and response bodies (the wire boundary only).

Blocks accept unknown fields (``cache_control``, ``citations``, whatever a newer client sends):
they are read for what the server needs and otherwise ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


_REFUSED = ("ImageBlock", "DocumentBlock")


def _without_media(schema: dict[str, Any]) -> None:
    """The schema of a content field without image and document blocks: the models accept them
    so that the 400 names the block, but no served model takes them, so the document leaves
    them out."""
    for key in ("oneOf", "anyOf"):
        if key in schema:
            schema[key] = [b for b in schema[key] if not _refused(b.get("$ref", ""))]
            for branch in schema[key]:
                _without_media(branch)
    if isinstance(schema.get("items"), dict):
        _without_media(schema["items"])
    mapping = schema.get("discriminator", {}).get("mapping", {})
    for name in [n for n, ref in mapping.items() if _refused(ref)]:
        del mapping[name]


def _refused(ref: str) -> bool:
    # refs are still pydantic's temporary names here ("...ImageBlock-Input__1")
    return any(name in ref for name in _REFUSED)


class TextBlock(_Wire):
    """A text block (``cache_control`` accepted and ignored)."""

    type: Literal["text"]
    text: str


class ImageBlock(_Wire):
    """An image (base64 or url source): refused while no vision model is served."""

    type: Literal["image"]
    source: dict[str, Any]


class DocumentBlock(_Wire):
    """A document (PDF or text source): refused like images."""

    type: Literal["document"]
    source: dict[str, Any]


class ToolUseBlock(_Wire):
    """A tool call the assistant made earlier."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(_Wire):
    """The result of a ``tool_use``, sent back by the client in a user message."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: (
        str | list[Annotated[TextBlock | ImageBlock | DocumentBlock, Field(discriminator="type")]] | None
    ) = Field(None, json_schema_extra=_without_media)
    is_error: bool | None = None


class ThinkingBlock(_Wire):
    """Reasoning the assistant produced earlier, passed back."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Wire):
    """Encrypted reasoning passed back: carries nothing this server can read."""

    type: Literal["redacted_thinking"]
    data: str = ""


class ServerToolBlock(_Wire):
    """A block of a tool that ran on Anthropic's side (web search, code execution, MCP connector)
    or a container upload, passed back by clients such as Claude Code: nothing here can use it,
    so it is skipped."""

    type: Literal[
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
    ]


ContentBlock = Annotated[
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
    | ServerToolBlock,
    Field(discriminator="type"),
]


class Message(_Wire):
    """One turn; ``system`` turns (Claude Code sends some) are folded into the system prompt."""

    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock] = Field(json_schema_extra=_without_media)


class Tool(_Wire):
    """A client tool. ``input_schema`` without ``type`` means an object. Server tools (a ``type``
    such as ``web_search_20250305``, no ``input_schema``) cannot run here and are left out."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class ToolChoice(_Wire):
    """auto, any (some tool), tool (the named one) or none."""

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(_Wire):
    """Extended thinking: reaches the chat template as ``enable_thinking``."""

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None


class OutputFormat(_Wire):
    """A JSON schema the answer's text must follow."""

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Wire):
    """``effort`` reaches the template as ``reasoning_effort``; ``format`` constrains the output."""

    effort: str | None = None
    format: OutputFormat | None = None


class CountTokensRequest(BaseModel):
    """POST /v1/messages/count_tokens: a Messages request without ``max_tokens``."""

    model: str
    # system turns are folded into the system prompt: one user or assistant turn is needed
    messages: list[Message] = Field(
        min_length=1,
        json_schema_extra={"contains": {"properties": {"role": {"enum": ["user", "assistant"]}}}},
    )
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages."""

    max_tokens: int = Field(
        gt=0,
        description="A ceiling: more than the context leaves room for is cut to what fits.",
        json_schema_extra={"x-ceiling": True},
    )
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None


class Usage(BaseModel):
    """Token counts; the whole prompt is input + cache_creation + cache_read tokens."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    service_tier: str = "standard"


class MessageResponse(BaseModel):
    """A whole answer: content blocks in the order thinking, text, tool_use."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[dict[str, Any]]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"] | None
    stop_sequence: str | None = None
    usage: Usage


class CountTokensResponse(BaseModel):
    """The prompt's size in tokens, tools and system prompt included."""

    input_tokens: int


class ErrorDetail(BaseModel):
    """Anthropic's error type and a message."""

    type: str
    message: str


class ErrorResponse(BaseModel):
    """Every error answer of these routes."""

    type: Literal["error"] = "error"
    error: ErrorDetail
