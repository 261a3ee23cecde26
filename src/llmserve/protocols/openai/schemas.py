"""Wire models for the OpenAI-compatible request bodies (plus vLLM's extra sampling fields).

Unknown fields are ignored, as by vLLM. Prompt/input shapes are checked by
``protocols.common.parse_prompts`` so that errors name the field in plain words.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmserve.api import PROMPT_SCHEMA

# What the request fields accept, stated in the OpenAPI document as the server checks it.
TokenId = Annotated[int, Field(ge=0)]
Bias = Annotated[float, Field(ge=-100, le=100)]
Seed = Annotated[int, Field(ge=-(2**63), lt=2**64)]
_OBJECT = {"type": "object", "additionalProperties": {}}
_TEXT_PART = {
    "type": "object",
    "properties": {"type": {"enum": ["text", "input_text", "output_text"]}, "text": {"type": "string"}},
    "required": ["type", "text"],
}
# Text only: image, audio and file parts are a 400 (no multimodal model is served).
CONTENT_SCHEMA = {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}, {"type": "null"}]}
_JSON_SCHEMA_FORMAT = {
    "type": "object",
    "properties": {
        "type": {"const": "json_schema"},
        "json_schema": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "schema": {"type": "object"},
                "strict": {"type": "boolean"},
            },
            "required": ["name"],
        },
    },
    "required": ["type", "json_schema"],
}
RESPONSE_FORMAT_SCHEMA = {
    "anyOf": [
        {"type": "object", "properties": {"type": {"enum": ["text", "json_object"]}}, "required": ["type"]},
        _JSON_SCHEMA_FORMAT,
        {"type": "null"},
    ]
}
STRUCTURED_SCHEMA = {
    "anyOf": [
        {"type": "object", "properties": {"json": {"type": "object"}}, "required": ["json"]},
        {
            "type": "object",
            "properties": {"regex": {"type": "string", "format": "regex"}},
            "required": ["regex"],
        },
        {
            "type": "object",
            "properties": {"choice": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
            "required": ["choice"],
        },
        {"type": "object", "properties": {"json_object": {"const": True}}, "required": ["json_object"]},
        {"type": "null"},
    ]
}


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), allow_inf_nan=False)


class StreamOptions(OpenAIModel):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class VLLMSamplingFields(OpenAIModel):
    """vLLM's extra body fields shared by completions and chat."""

    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    stop_token_ids: list[TokenId] | None = None
    include_stop_str_in_output: bool | None = None
    prompt_logprobs: int | None = Field(None, ge=0)
    allowed_token_ids: list[TokenId] | None = Field(None, min_length=1)
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    request_id: str | None = None  # the response id becomes "chatcmpl-<request_id>" (vLLM)
    return_tokens_as_token_ids: bool | None = None
    return_token_ids: bool | None = None
    priority: int = 0
    timeout: float | None = Field(
        None, gt=0, description="Seconds this request may take (at most --timeout)."
    )
    stream_interval: int | None = Field(None, ge=1, description="Tokens per streamed chunk.")
    vllm_xargs: dict[str, Any] | None = Field(None, description="Arguments for custom logits processors.")
    use_beam_search: bool = False
    length_penalty: float = 1.0
    # Structured outputs (llmserve.structured reads them; malformed ones are a 400 there)
    response_format: dict[str, Any] | None = Field(None, json_schema_extra=RESPONSE_FORMAT_SCHEMA)
    structured_outputs: dict[str, Any] | None = Field(
        None,
        json_schema_extra=STRUCTURED_SCHEMA,
        description="Exactly one of json, regex, choice, grammar, json_object, structural_tag; "
        "plus disable_any_whitespace, disable_additional_properties, whitespace_pattern.",
    )
    guided_json: Any = Field(
        None,
        description="Deprecated: structured_outputs.json.",
        json_schema_extra={"deprecated": True, **_OBJECT},
    )
    guided_regex: str | None = Field(
        None,
        description="Deprecated: structured_outputs.regex.",
        json_schema_extra={"deprecated": True, "format": "regex"},
    )
    guided_choice: list[str] | None = Field(
        None,
        description="Deprecated: structured_outputs.choice.",
        json_schema_extra={"deprecated": True, "minItems": 1},
    )
    guided_grammar: str | None = Field(
        None,
        description="Deprecated: structured_outputs.grammar (EBNF or Lark).",
        json_schema_extra={"deprecated": True},
    )
    guided_decoding_backend: str | None = Field(None, description="Deprecated: the request's backend.")


class CompletionRequest(VLLMSamplingFields):
    """POST /v1/completions."""

    model: str | None = None
    prompt: Any = Field(json_schema_extra=PROMPT_SCHEMA)
    best_of: int | None = Field(None, ge=1)
    echo: bool = False
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Bias] | None = None
    logprobs: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(16, ge=1)
    n: int = Field(1, ge=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: Seed | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    user: Any = None  # a string for OpenAI; some clients send an object
    add_special_tokens: bool = True


class ChatMessage(OpenAIModel):
    """One message; extra keys (reasoning_content, ...) are kept for the template."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(min_length=1)
    content: str | list[Any] | None = Field(None, json_schema_extra=CONTENT_SCHEMA)
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(OpenAIModel):
    model_config = ConfigDict(extra="allow")

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(OpenAIModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class ChatCompletionRequest(VLLMSamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Bias] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(0, ge=0)
    max_tokens: int | None = Field(
        None, ge=1, description="Deprecated by OpenAI in favour of max_completion_tokens."
    )
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: Seed | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = "none"
    parallel_tool_calls: bool | None = None
    user: Any = None  # a string for OpenAI; some clients send an object
    reasoning_effort: str | None = None
    include_reasoning: bool = Field(True, description="Return the reasoning (with a reasoning parser).")
    thinking_token_budget: int | None = Field(
        None, ge=0, description="End the reasoning after this many tokens (needs a reasoning parser)."
    )
    # vLLM chat extras
    echo: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    documents: list[dict[str, Any]] | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class EmbeddingRequest(OpenAIModel):
    """POST /v1/embeddings."""

    model: str | None = None
    input: Any = Field(json_schema_extra=PROMPT_SCHEMA)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: Any = None  # a string for OpenAI; some clients send an object
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    add_special_tokens: bool = True
    normalize: bool | None = None
    priority: int = 0
    request_id: str | None = None


# --- responses (the routes build plain dicts in this shape; tests validate them against these
# models, and the OpenAPI document shows them) ----------------------------------------------------


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class UsageInfo(ResponseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int | None = 0
    prompt_tokens_details: dict[str, int] | None = None


class CompletionLogprobs(ResponseModel):
    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class CompletionChoice(ResponseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_logprobs: list[dict[str, dict[str, Any]] | None] | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None


class CompletionResponse(ResponseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(ResponseModel):
    content: list[ChatLogprobEntry] | None = None


class FunctionCall(ResponseModel):
    name: str
    arguments: str


class ToolCall(ResponseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatResponseMessage(ResponseModel):
    role: str
    content: str | None = None
    refusal: str | None = None
    annotations: Any = None
    audio: Any = None
    function_call: Any = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    reasoning: str | None = None
    reasoning_content: str | None = None


class ChatChoice(ResponseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None


class ChatCompletionResponse(ResponseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None
    prompt_logprobs: list[dict[str, dict[str, Any]] | None] | None = None
    prompt_token_ids: list[int] | None = None


class EmbeddingData(ResponseModel):
    index: int
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str


class EmbeddingResponse(ResponseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[EmbeddingData]
    usage: UsageInfo


class ModelCard(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmserve"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[dict[str, Any]] = Field(default_factory=list)


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
