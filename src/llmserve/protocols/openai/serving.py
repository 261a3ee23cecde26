"""What completions and chat share: checks, starting engine requests, their final outputs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llmserve.api import (
    Config,
    GenerationStream,
    OutputKind,
    Prompt,
    ProtocolContext,
    RequestOutput,
    SamplingParams,
    ServedModel,
    UnsupportedError,
)

if TYPE_CHECKING:
    from llmserve.protocols.openai.schemas import VLLMSamplingFields


def check_supported(req: VLLMSamplingFields) -> None:
    """Refuse (400) what this server does not do rather than silently ignoring it."""
    if req.use_beam_search:
        raise UnsupportedError("Beam search is not supported.", param="use_beam_search")
    if req.length_penalty != 1.0:  # it only shapes beam search
        raise UnsupportedError(
            "length_penalty needs beam search, which is not supported.", param="length_penalty"
        )


def stream_flags(req: Any, config: Config) -> tuple[bool, bool]:
    """(include_usage, continuous_usage_stats); stream_options on a non-streaming request is
    ignored (LiteLLM sends it), --enable-force-include-usage forces usage into every stream."""
    options = req.stream_options if req.stream else None
    include = bool(options and options.include_usage) or config.enable_force_include_usage
    return include, bool(options and options.continuous_usage_stats)


def apply_server_defaults(req: Any, config: Config) -> None:
    """Request fields the server's flags fill when the request leaves them out."""
    if req.return_tokens_as_token_ids is None:
        req.return_tokens_as_token_ids = config.return_tokens_as_token_ids


def start_requests(
    ctx: ProtocolContext,
    model: ServedModel,
    base_id: str,
    prompts: Sequence[Prompt],
    params: Sequence[SamplingParams],
    kind: OutputKind,
    req: Any,
    prompt_param: str = "prompt",
) -> list[GenerationStream]:
    """One engine request per prompt (with the request's priority, timeout and stream interval);
    if one is refused, those already started are closed. Errors about a prompt name
    ``prompt_param`` (chat: ``messages``)."""
    streams: list[GenerationStream] = []
    try:
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            request_id = base_id if len(prompts) == 1 else f"{base_id}-{i}"
            streams.append(
                ctx.generate(
                    model,
                    prompt.token_ids,
                    p,
                    request_id=request_id,
                    kind=kind,
                    priority=req.priority,
                    timeout=req.timeout,
                    stream_interval=req.stream_interval,
                    prompt_param=prompt_param,
                )  # fmt: skip
            )
    except BaseException:
        for stream in streams:
            stream.close()
        raise
    return streams


async def ready(streams: Sequence[GenerationStream]) -> list[GenerationStream]:
    """``streams`` once their output constraints are compiled; on a failure (a 400) all are closed."""
    try:
        for stream in streams:
            await stream.ready()
    except BaseException:
        for stream in streams:
            stream.close()
        raise
    return streams


async def results(streams: Sequence[GenerationStream]) -> list[RequestOutput]:
    """Every request's final output, in order; a failure aborts the others."""
    try:
        return list(await asyncio.gather(*(s.result() for s in streams)))
    finally:
        for stream in streams:
            await stream.aclose()


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict[str, Any]:
    """OpenAI's usage object; ``cached_tokens`` (with --enable-prompt-tokens-details) fills
    ``prompt_tokens_details``."""
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None if cached_tokens is None else {"cached_tokens": cached_tokens},
    }
