"""What completions and chat share: checks, starting engine requests, their final outputs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llmserve.api import (
    GenerationStream,
    InvalidRequestError,
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


def stream_flags(req: Any) -> tuple[bool, bool]:
    """(include_usage, continuous_usage_stats) from stream_options, which needs stream=true."""
    options = req.stream_options
    if options is None:
        return False, False
    if not req.stream:
        raise InvalidRequestError(
            "Stream options can only be defined when `stream=True`.", param="stream_options"
        )
    return bool(options.include_usage), bool(options.continuous_usage_stats)


def start_requests(
    ctx: ProtocolContext,
    model: ServedModel,
    base_id: str,
    prompts: Sequence[Prompt],
    params: Sequence[SamplingParams],
    kind: OutputKind,
    priority: int = 0,
) -> list[GenerationStream]:
    """One engine request per prompt; if one is refused, those already started are closed."""
    streams: list[GenerationStream] = []
    try:
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            request_id = base_id if len(prompts) == 1 else f"{base_id}-{i}"
            streams.append(
                ctx.generate(model, prompt.token_ids, p, request_id=request_id, kind=kind, priority=priority)
            )
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


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }
