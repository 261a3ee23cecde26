"""Wire models of vLLM's own routes (tokenize, generate, pooling, score, rerank, render; Cohere's
v2 shapes are in cohere_schemas.py). Field names and defaults follow vLLM's request models;
unknown request fields are ignored, like vLLM does."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    field_validator,
    model_validator,
)

from llmserve.api import PROMPT_SCHEMA


class Request(BaseModel):
    """Base of request bodies: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())


# What the request fields accept, stated in the OpenAPI document as the server checks it (the
# same bounds as the OpenAI request models).
TokenId = Annotated[int, Field(ge=0)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
Bias = Annotated[float, Field(ge=-100, le=100)]
Seed = Annotated[int, Field(ge=-(2**63), lt=2**64)]
# -1 (the context length) or at least 1 token
Truncate = Annotated[int, Field(ge=1)] | Literal[-1]
_ROLE = {"type": "string", "minLength": 1}
_TEXT_PART = {
    "type": "object",
    "properties": {"type": {"enum": ["text", "input_text", "output_text"]}, "text": {"type": "string"}},
    "required": ["type", "text"],
}
# A chat message as the template renderer takes it: a role, and text content (image, audio and
# file parts are a 400: no multimodal model is served).
MESSAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "role": _ROLE,
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}, {"type": "null"}]},
    },
    "required": ["role"],
}
Messages = Annotated[list[dict[str, Any]], Field(min_length=1, json_schema_extra={"items": MESSAGE_SCHEMA})]


class Wire(BaseModel):
    model_config = ConfigDict(protected_namespaces=())


class ErrorInfo(Wire):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class ErrorResponse(Wire):
    error: ErrorInfo


# --- health and friends ------------------------------------------------------------------------------


class VersionResponse(Wire):
    version: str


class LoadResponse(Wire):
    server_load: int = Field(description="Requests being handled right now (inference routes).")


class IsSleepingResponse(Wire):
    is_sleeping: bool


# --- tokenize ------------------------------------------------------------------------------------------


class TokenizeCompletionRequest(Request):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(Request):
    model: str | None = None
    messages: Messages
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    return_token_strs: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _one_ending(self) -> TokenizeChatRequest:
        if self.add_generation_prompt and self.continue_final_message:
            raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        return self


class TokenizeResponse(Wire):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(Request):
    model: str | None = None
    tokens: list[TokenId]


class DetokenizeResponse(Wire):
    prompt: str


# --- sampling fields shared by /generate and the render routes ---------------------------------------


class SamplingFields(Request):
    """vLLM SamplingParams fields; None means "the model's default" (generation_config)."""

    n: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    seed: Seed | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[TokenId] | None = None
    include_stop_str_in_output: bool | None = None
    ignore_eos: bool | None = None
    max_tokens: int | None = Field(None, ge=1)
    min_tokens: int | None = Field(None, ge=0)
    logit_bias: dict[str, Bias] | None = None
    allowed_token_ids: TokenIds | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    priority: int = Field(0, description="Lower runs first under --scheduling-policy priority.")
    vllm_xargs: dict[str, Any] | None = Field(None, description="Arguments for custom logits processors.")


# --- generate ------------------------------------------------------------------------------------------


# exactly one of prompt / prompt_token_ids, not null (null counts as left out)
_ONE_PROMPT = [
    {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
    {"required": ["prompt_token_ids"], "properties": {"prompt_token_ids": {"type": "array"}}},
]


class GenerateRequest(SamplingFields):
    """vLLM's low-level ``/generate``: a prompt (text or token ids) plus SamplingParams fields."""

    model_config = ConfigDict(json_schema_extra={"oneOf": _ONE_PROMPT})

    model: str | None = None
    prompt: str | None = Field(None, json_schema_extra={"minLength": 1})
    prompt_token_ids: TokenIds | None = None
    stream: bool = False
    max_tokens: int | None = Field(16, ge=1)  # vLLM's SamplingParams default
    logprobs: int | None = Field(None, ge=0, description="Return this many top logprobs per generated token.")
    structured_outputs: dict[str, Any] | None = Field(
        None,
        description="Constrain the output: exactly one of json, regex, choice, grammar, json_object, structural_tag.",
    )
    response_format: dict[str, Any] | None = None
    guided_json: Any = Field(None, description="Deprecated: structured_outputs.json.")
    guided_regex: str | None = Field(None, description="Deprecated: structured_outputs.regex.")
    guided_choice: list[str] | None = Field(None, description="Deprecated: structured_outputs.choice.")
    guided_grammar: str | None = Field(None, description="Deprecated: structured_outputs.grammar.")
    guided_decoding_backend: str | None = Field(None, description="Deprecated: the request's backend.")

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateRequest:
        if (self.prompt is None) == (self.prompt_token_ids is None):
            raise ValueError("give exactly one of `prompt` or `prompt_token_ids`")
        return self


class TokenLogprob(Wire):
    token_id: int
    logprob: float
    top_logprobs: dict[str, float] | None = None


class GenerateResponse(Wire):
    text: list[str] = Field(description="Per choice: the prompt text (when given as text) + the completion.")
    token_ids: list[list[int]]
    finish_reason: list[str | None]
    stop_reason: list[int | str | None]
    prompt_token_ids: list[int]
    logprobs: list[list[TokenLogprob]] | None = None


# --- render --------------------------------------------------------------------------------------------


class CompletionRenderRequest(SamplingFields):
    model: str | None = None
    prompt: Any = Field(json_schema_extra=PROMPT_SCHEMA)
    add_special_tokens: bool = True
    truncate_prompt_tokens: Truncate | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False


class ChatRenderRequest(SamplingFields):
    model: str | None = None
    messages: Messages
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_ending(self) -> ChatRenderRequest:
        if self.add_generation_prompt and self.continue_final_message:
            raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        return self


class RenderedRequest(Wire):
    """vLLM's token-in GenerateRequest: what the engine would receive, without generating."""

    request_id: str
    model: str
    token_ids: list[int]
    prompt: str | None = Field(None, description="The rendered prompt text (None for token-id prompts).")
    sampling_params: dict[str, Any]
    stream: bool = False
    stream_options: dict[str, Any] | None = None


# --- pooling, score, rerank ---------------------------------------------------------------------------


class RenderedRequests(RootModel[list[RenderedRequest]]):
    """/v1/completions/render: one rendered request per prompt."""


class UsageInfo(Wire):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int | None = 0


class PoolingRequest(Request):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    truncate_prompt_tokens: int | None = None
    normalize: bool = True
    dimensions: int | None = None

    @field_validator("input", mode="wrap")
    @classmethod
    def _input(cls, value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(
                "must be a string, a list of strings, a list of token ids or a list of token id lists"
            ) from None


class PoolingData(Wire):
    index: int
    object: Literal["pooling"] = "pooling"
    data: list[float] | str


class PoolingResponse(Wire):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[PoolingData]
    usage: UsageInfo


class ScoreRequest(Request):
    model: str | None = None
    text_1: str | list[str]
    text_2: str | list[str]
    truncate_prompt_tokens: int | None = None


class ScoreData(Wire):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(Wire):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: UsageInfo


class RerankDocumentIn(Request):
    text: str


class RerankRequest(Request):
    """Jina-style rerank (vLLM's ``/rerank`` and ``/v1/rerank``); ``top_n`` 0 or absent = all."""

    model: str | None = None
    query: str
    documents: list[str | RerankDocumentIn]
    top_n: int | None = Field(None, ge=0)
    truncate_prompt_tokens: int | None = None
    return_documents: bool = True


class RerankDocument(Wire):
    text: str


class RerankResult(Wire):
    index: int
    document: RerankDocument | None = None
    relevance_score: float


class RerankUsage(Wire):
    total_tokens: int


class RerankResponse(Wire):
    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]


class ClassifyRequest(Request):
    model: str | None = None
    input: str | list[str]
