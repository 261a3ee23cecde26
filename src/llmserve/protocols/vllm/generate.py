"""vLLM's low-level ``POST /generate`` (the demo ``api_server``'s route), with token ids added.

Request: ``{"prompt": "..."}`` or ``{"prompt_token_ids": [...]}``, plus ``"stream": bool`` and any
vLLM SamplingParams field (``n``, ``temperature``, ``top_p``, ``top_k``, ``min_p``, penalties,
``seed``, ``stop``, ``stop_token_ids``, ``ignore_eos``, ``max_tokens`` (default 16, as in vLLM),
``min_tokens``, ``logprobs``, ``logit_bias``, ``allowed_token_ids``, ``skip_special_tokens``, ...),
and structured outputs as on the OpenAI routes (``structured_outputs``, ``response_format``, ``guided_*``).
Fields left out take the model's generation_config defaults.

Response (GenerateResponse)::

    {"text": [prompt + completion, ...],      # one per choice; the prompt is prepended like vLLM
                                                # does, only when it was given as text
     "token_ids": [[...], ...],                # generated ids per choice
     "finish_reason": ["stop" | "length" | "abort" | null, ...],
     "stop_reason": [stop string | token id | null, ...],
     "prompt_token_ids": [...],
     "logprobs": [[{"token_id", "logprob", "top_logprobs": {id: logprob}}], ...] | null}

Streaming (``"stream": true``): newline-delimited JSON (``application/x-ndjson``), one object per
engine step, each the cumulative state in the shape above (like vLLM, which repeats the full text
in every chunk). With ``Accept: text/event-stream`` the same objects come as server-sent events,
ended by ``data: [DONE]``. A failure after the stream started is sent as a final
``{"error": {...}}`` object.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from quart import Blueprint, Response, jsonify, request

from llmserve.api import (
    SSE_DONE,
    GenerationStream,
    OutputKind,
    RequestOutput,
    context,
    document,
    error_body,
    parse_body,
    random_id,
    sse,
    sse_response,
)
from llmserve.protocols.vllm import schemas

bp = Blueprint("vllm_generate", __name__)


def _body(output: RequestOutput, prefix: str, want_logprobs: bool) -> dict[str, Any]:
    """vLLM's /generate shape from a cumulative output (every choice's whole text so far)."""
    choices = output.outputs
    logprobs = None
    if want_logprobs:
        logprobs = [
            [
                {
                    "token_id": chosen.token_id,
                    "logprob": chosen.logprob,
                    "top_logprobs": {str(t.token_id): t.logprob for t in top},
                }
                for chosen, top in choice.logprobs or []
            ]
            for choice in choices
        ]
    return {
        "text": [prefix + c.text for c in choices],
        "token_ids": [c.token_ids for c in choices],
        "finish_reason": [c.finish_reason for c in choices],
        "stop_reason": [c.stop_reason for c in choices],
        "prompt_token_ids": output.prompt_token_ids,
        "logprobs": logprobs,
    }


@bp.post("/generate")
@document(
    "Generate from a text or token-id prompt (vLLM's low-level API); streams NDJSON or SSE when asked.",
    request=schemas.GenerateRequest,
    response=schemas.GenerateResponse,
    tags=["vllm"],
    stream_types=("application/x-ndjson", "text/event-stream"),  # NDJSON unless SSE is asked for
)
async def generate() -> Response:
    req = await parse_body(schemas.GenerateRequest)
    ctx = context()
    model = ctx.model_for(req.model)
    if req.prompt is not None:
        prompt_ids, prefix = ctx.tokenize(model, req.prompt), req.prompt
    else:
        prompt_ids, prefix = list(req.prompt_token_ids or []), ""
    constraint = await ctx.structured_constraint(model, req)
    params = ctx.sampling_params(model, req, len(prompt_ids), constraint=constraint)
    kind = OutputKind.CUMULATIVE if req.stream else OutputKind.FINAL_ONLY
    stream = ctx.generate(
        model, prompt_ids, params, request_id=random_id("generate"), kind=kind, priority=req.priority,
        prompt_param="prompt" if req.prompt is not None else "prompt_token_ids",
    )  # fmt: skip
    await stream.ready()  # the constraint compiled while the prompt was computed
    want_logprobs = params.logprobs is not None
    if not req.stream:
        return jsonify(_body(await stream.result(), prefix, want_logprobs))
    sse_format = "text/event-stream" in request.headers.get("Accept", "")
    events = _events(stream, prefix, want_logprobs, sse_format)
    if sse_format:
        return sse_response(events)
    response = Response(events, mimetype="application/x-ndjson")
    response.timeout = None  # a stream may outlive Quart's default response timeout
    return response


async def _events(
    stream: GenerationStream, prefix: str, want_logprobs: bool, sse_format: bool
) -> AsyncIterator[str]:
    def line(data: dict[str, Any]) -> str:
        return sse(data) if sse_format else json.dumps(data, ensure_ascii=False) + "\n"

    try:
        async for output in stream:
            yield line(_body(output, prefix, want_logprobs))
    except Exception as exc:  # the stream already started: report in-band
        yield line(error_body(exc))
    finally:
        await stream.aclose()  # client gone or done: abort the request, free its KV blocks
    if sse_format:
        yield SSE_DONE
