"""The five MCP tools, each a typed function over a ProtocolContext (the engine in this process)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Annotated, Literal

from mcp.server.mcpserver.exceptions import ToolError  # reported to the client as a failed call
from pydantic import BaseModel, Field

from llmserve.api import EMBED, GENERATE, LLMServeError, OutputKind, ProtocolContext
from llmserve_mcp.metrics import MetricsResult, MetricsWatch

ModelName = Annotated[
    str | None,
    Field(description="A served model's name (see list_models); default: the first that can do it."),
]
MaxTokens = Annotated[int, Field(ge=1, description="Most tokens to generate.")]
Temperature = Annotated[float, Field(ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")]
TopP = Annotated[
    float, Field(gt=0.0, le=1.0, description="Nucleus sampling: keep this much probability mass.")
]
Stop = Annotated[list[str] | None, Field(description="Strings that end the output (not included).")]
Seed = Annotated[int | None, Field(ge=0, description="Seed for reproducible sampling.")]


class Usage(BaseModel):
    """Tokens read and written."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResult(BaseModel):
    """A generated continuation."""

    model: str
    text: str
    finish_reason: str | None = Field(description="stop (a stop string or end of text) or length")
    usage: Usage


class Message(BaseModel):
    """One turn of a conversation."""

    role: Literal["system", "user", "assistant"]
    content: str


class ChatResult(BaseModel):
    """The assistant's reply."""

    model: str
    role: Literal["assistant"] = "assistant"
    content: str
    finish_reason: str | None
    usage: Usage


class EmbeddingsResult(BaseModel):
    """One normalized vector per input, in input order."""

    model: str
    dimensions: int
    embeddings: list[list[float]]
    prompt_tokens: int


class ServedModelInfo(BaseModel):
    """A model this server runs."""

    id: str
    aliases: list[str]
    kind: str = Field(description="generate (completion, chat), embed (embeddings) or transcribe")
    max_model_len: int


class ModelsResult(BaseModel):
    """Every served model; the first of a kind is the default for it."""

    models: list[ServedModelInfo]


def _failed(exc: LLMServeError) -> ToolError:
    return ToolError(f"{exc.message} ({exc.status} {exc.type})")


class Tools:
    """The tools, bound to the context that gives them models (set once the server runs)."""

    def __init__(self, get_context: Callable[[], ProtocolContext]) -> None:
        self.context = get_context
        self.watch = MetricsWatch()

    async def _generate(self, model, token_ids: list[int], request: SimpleNamespace):
        ctx = self.context()
        params = ctx.sampling_params(model, request, len(token_ids))
        output = await ctx.generate(model, token_ids, params, kind=OutputKind.FINAL_ONLY).result()
        choice = output.outputs[0]
        prompt_tokens = len(output.prompt_token_ids)
        completion = len(choice.token_ids)
        usage = Usage(
            prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion
        )
        return choice, usage

    async def generate_completion(
        self,
        prompt: Annotated[str, Field(min_length=1, description="Text to continue.")],
        max_tokens: MaxTokens = 128,
        temperature: Temperature = 0.7,
        top_p: TopP = 1.0,
        stop: Stop = None,
        seed: Seed = None,
        model: ModelName = None,
    ) -> CompletionResult:
        """Continue a text prompt with a served language model (a plain completion, no chat template)."""
        ctx = self.context()
        try:
            served = ctx.model_for(model, GENERATE)
            token_ids = ctx.prompts(served, prompt)[0].token_ids
            request = SimpleNamespace(
                max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed
            )
            choice, usage = await self._generate(served, token_ids, request)
        except LLMServeError as exc:
            raise _failed(exc) from None
        return CompletionResult(
            model=served.name, text=choice.text, finish_reason=choice.finish_reason, usage=usage
        )

    async def chat(
        self,
        messages: Annotated[
            list[Message], Field(min_length=1, description="The conversation so far, oldest first.")
        ],
        system_prompt: Annotated[
            str | None, Field(description="Instructions put first as a system message.")
        ] = None,
        max_tokens: MaxTokens = 256,
        temperature: Temperature = 0.7,
        top_p: TopP = 1.0,
        stop: Stop = None,
        seed: Seed = None,
        model: ModelName = None,
    ) -> ChatResult:
        """Answer a multi-turn conversation with a served chat model (its chat template applied)."""
        ctx = self.context()
        turns = [m.model_dump() for m in messages]
        if system_prompt:
            turns.insert(0, {"role": "system", "content": system_prompt})
        try:
            served = ctx.model_for(model, GENERATE)
            rendered = ctx.render_chat(served, turns, add_generation_prompt=True)
            request = SimpleNamespace(
                max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed
            )
            choice, usage = await self._generate(served, rendered.token_ids, request)
        except LLMServeError as exc:
            raise _failed(exc) from None
        return ChatResult(
            model=served.name, content=choice.text, finish_reason=choice.finish_reason, usage=usage
        )

    async def get_embeddings(
        self,
        input: Annotated[
            str | list[Annotated[str, Field(min_length=1)]],
            Field(min_length=1, max_length=256, description="A text, or texts, to embed."),
        ],
        model: ModelName = None,
    ) -> EmbeddingsResult:
        """Embed texts with a served embedding model: one unit-length vector per text."""
        ctx = self.context()
        texts = [input] if isinstance(input, str) else input
        try:
            served = ctx.model_for(model, EMBED)
            token_ids = [ctx.tokenize(served, text) for text in texts]
            vectors = await ctx.embed(served, token_ids, normalize=True)
        except LLMServeError as exc:
            raise _failed(exc) from None
        return EmbeddingsResult(
            model=served.name,
            dimensions=len(vectors[0]) if vectors else 0,
            embeddings=[list(map(float, v)) for v in vectors],
            prompt_tokens=sum(len(ids) for ids in token_ids),
        )

    async def list_models(self) -> ModelsResult:
        """The models this server runs: names, kind and context length."""
        return ModelsResult(
            models=[
                ServedModelInfo(
                    id=m.name, aliases=list(m.aliases), kind=m.kind, max_model_len=m.max_model_len
                )
                for m in self.context().models
            ]
        )

    async def monitor_metrics(self) -> MetricsResult:
        """The engines' state now: throughput (tokens/s since the previous call and since start),
        latency (time to first token, end to end), queue (running, waiting) and KV cache use."""
        return self.watch.read(self.context())

    def all(self) -> list[Callable]:
        return [
            self.generate_completion,
            self.chat,
            self.get_embeddings,
            self.list_models,
            self.monitor_metrics,
        ]
