"""Wire models of the Responses API: the request body, and the shapes answered (for OpenAPI).

Items and tools stay plain dicts here: ``items`` and ``tools`` check them with messages that
name the offending item, which pydantic's union errors would not.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# the ``include`` values served (others are a 400)
INCLUDE = ("message.output_text.logprobs", "reasoning.encrypted_content")


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), allow_inf_nan=False)


class TextFormat(_Model):
    """``text.format``: plain text, any JSON object, or JSON following a schema."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextOptions(_Model):
    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningOptions(_Model):
    effort: str | None = None
    summary: str | None = None


class ResponseRequest(_Model):
    """POST /v1/responses."""

    model: str | None = None
    input: str | list[dict[str, Any]] = Field(..., description="A user message, or a list of items.")
    instructions: str | None = Field(None, description="A system message; not carried to later turns.")
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    tools: list[dict[str, Any]] | None = Field(None, description="Function tools.")
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    max_tool_calls: int | None = Field(None, ge=1)
    text: TextOptions | None = None
    reasoning: ReasoningOptions | None = None
    include: list[str] | None = Field(None, json_schema_extra={"items": {"enum": list(INCLUDE)}})
    top_logprobs: int | None = Field(
        None, ge=0, le=20, description="With include message.output_text.logprobs."
    )
    metadata: dict[str, str] | None = None
    store: bool = True
    background: bool = False
    previous_response_id: str | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    user: str | None = None
    stream: bool = False
    seed: int | None = None


class Usage(_Model):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class ResponseObject(_Model):
    """A response, as created, retrieved, or carried by streaming events."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "failed", "in_progress", "incomplete", "queued", "cancelled"]
    model: str
    output: list[dict[str, Any]]
    output_text: str | None = None
    instructions: str | None = None
    incomplete_details: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    usage: Usage | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    tools: list[dict[str, Any]] = []
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = True
    background: bool = False
    truncation: str = "disabled"
    user: str | None = None


class InputItemList(_Model):
    """GET /v1/responses/{id}/input_items."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class DeletedResponse(_Model):
    """DELETE /v1/responses/{id}."""

    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class CancelRequest(_Model):
    """POST /v1/responses/{id}/cancel takes no fields (an empty body is fine)."""
