"""vLLM's low-level ``POST /generate`` (the demo ``api_server``'s route), with token ids added.

Request: ``{"prompt": "..."}`` or ``{"prompt_token_ids": [...]}``, plus ``"stream": bool`` and any
vLLM SamplingParams field (``n``, ``temperature``, ``top_p``, ``top_k``, ``min_p``, penalties,
``seed``, ``stop``, ``stop_token_ids``, ``ignore_eos``, ``max_tokens`` (default 16, as in vLLM),
``min_tokens``, ``logprobs``, ``logit_bias``, ``allowed_token_ids``, ``skip_special_tokens``, ...).
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

from llmserve.engine.outputs import RequestOutput
from llmserve.errors import UnsupportedError
from llmserve.protocols.common import (
    SSE_DONE,
    error_body,
    parse_body,
    prefetch,
    random_id,
    resolve_model,
    sse,
    sse_response,
    to_sampling_params,
)
from llmserve.protocols.vllm import schemas
from llmserve.protocols.vllm.openapi import document
from llmserve.state import get_state

bp = Blueprint("vllm_generate", __name__)


class _Snapshot:
    """The cumulative state of every choice of one request."""

    def __init__(self, n: int, prefix: str, prompt_token_ids: list[int], want_logprobs: bool) -> None:
        self.text = [prefix] * n
        self.token_ids: list[list[int]] = [[] for _ in range(n)]
        self.finish_reason: list[str | None] = [None] * n
        self.stop_reason: list[Any] = [None] * n
        self.logprobs: list[list[dict[str, Any]]] | None = [[] for _ in range(n)] if want_logprobs else None
        self.prompt_token_ids = prompt_token_ids

    def add(self, output: RequestOutput) -> None:
        for choice in output.outputs:
            i = choice.index
            self.text[i] += choice.text
            self.token_ids[i].extend(choice.token_ids)
            if choice.finish_reason is not None:
                self.finish_reason[i], self.stop_reason[i] = choice.finish_reason, choice.stop_reason
            if self.logprobs is not None and choice.logprobs:
                for chosen, top in choice.logprobs:
                    self.logprobs[i].append(
                        {
                            "token_id": chosen.token_id,
                            "logprob": chosen.logprob,
                            "top_logprobs": {str(t.token_id): t.logprob for t in top},
                        }
                    )

    def body(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "finish_reason": self.finish_reason,
            "stop_reason": self.stop_reason,
            "prompt_token_ids": self.prompt_token_ids,
            "logprobs": self.logprobs,
        }


@bp.post("/generate")
@document(
    "Generate from a text or token-id prompt (vLLM's low-level API); streams NDJSON or SSE when asked.",
    request=schemas.GenerateRequest,
    response=schemas.GenerateResponse,
    tags=["vllm"],
)
async def generate() -> Response:
    req = await parse_body(schemas.GenerateRequest)
    state = get_state()
    engine = state.engine
    if engine is None:
        raise UnsupportedError("No generation model is loaded.")
    resolve_model(state, req.model, "generate")
    if req.prompt is not None:
        prompt_ids = list(engine.tokenizer(req.prompt)["input_ids"])
        prefix = req.prompt
    else:
        prompt_ids, prefix = list(req.prompt_token_ids or []), ""
    params = to_sampling_params(req, engine.generation_defaults, engine.max_model_len, len(prompt_ids))
    outputs = await prefetch(engine.generate(random_id("generate"), prompt_ids, params))
    snapshot = _Snapshot(params.n, prefix, prompt_ids, params.logprobs is not None)
    if not req.stream:
        try:
            async for output in outputs:
                snapshot.add(output)
        finally:
            await outputs.aclose()
        return jsonify(snapshot.body())
    if "text/event-stream" in request.headers.get("Accept", ""):
        return sse_response(_events(outputs, snapshot, sse_format=True))
    response = Response(_events(outputs, snapshot, sse_format=False), mimetype="application/x-ndjson")
    response.timeout = None  # a stream may outlive Quart's default response timeout
    return response


async def _events(
    outputs: AsyncIterator[RequestOutput], snapshot: _Snapshot, sse_format: bool
) -> AsyncIterator[str]:
    def line(data: dict[str, Any]) -> str:
        return sse(data) if sse_format else json.dumps(data, ensure_ascii=False) + "\n"

    try:
        async for output in outputs:
            snapshot.add(output)
            yield line(snapshot.body())
    except Exception as exc:  # the stream already started: report in-band
        yield line(error_body(exc))
    finally:
        await outputs.aclose()  # client gone or done: abort the request, free its KV blocks
    if sse_format:
        yield SSE_DONE
