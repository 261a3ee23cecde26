"""``/v1/completions/render`` and ``/v1/chat/completions/render``: the prompt a request would
run with, tokenized, and its sampling parameters, without generating (vLLM's render routes).

Both answer with vLLM's token-in ``GenerateRequest`` shape (``request_id``, ``model``,
``token_ids``, ``sampling_params``, ``stream``, ``stream_options``) plus ``prompt``, the rendered
text. Completions render answers with a list (one item per prompt), chat render with one object.
The same checks as a real request apply (unknown model 404, too long for the context 400).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from quart import Blueprint, Response, jsonify

from llmserve.api import (
    ProtocolContext,
    SamplingParams,
    ServedModel,
    context,
    document,
    parse_body,
    random_id,
)
from llmserve.protocols.vllm import schemas

bp = Blueprint("vllm_render", __name__)


def sampling_dict(params: SamplingParams) -> dict[str, Any]:
    data = asdict(params)
    data.pop("constraint", None)  # a live object, not wire data
    data["logit_bias"] = {str(k): v for k, v in params.logit_bias.items()}
    return data


def _rendered(
    ctx: ProtocolContext,
    model: ServedModel,
    req: Any,
    request_id: str,
    ids: list[int],
    text: str | None,
    prompt_param: str = "prompt",
) -> dict[str, Any]:
    params = ctx.sampling_params(model, req, len(ids))
    ctx.check_generate(model, ids, params, req.priority, prompt_param)
    return schemas.RenderedRequest(
        request_id=request_id,
        model=model.answer_name(req.model),
        token_ids=ids,
        prompt=text,
        sampling_params=sampling_dict(params),
        stream=req.stream,
        stream_options=req.stream_options,
    ).model_dump()


@bp.post("/v1/completions/render")
@document(
    "Render a completions request: its prompts' token ids and sampling parameters, without generating.",
    request=schemas.CompletionRenderRequest,
    response=schemas.RenderedRequests,
    tags=["vllm"],
)
async def render_completion() -> Response:
    req = await parse_body(schemas.CompletionRenderRequest)
    ctx = context()
    model = ctx.model_for(req.model)
    prompts = ctx.prompts(
        model,
        req.prompt,
        add_special_tokens=req.add_special_tokens,
        truncate_prompt_tokens=req.truncate_prompt_tokens,
    )
    base = random_id("cmpl")
    items = [
        _rendered(ctx, model, req, base if len(prompts) == 1 else f"{base}-{i}", p.token_ids, p.text)
        for i, p in enumerate(prompts)
    ]
    return jsonify(items)


@bp.post("/v1/chat/completions/render")
@document(
    "Render a chat request with the chat template: token ids and sampling parameters, without generating.",
    request=schemas.ChatRenderRequest,
    response=schemas.RenderedRequest,
    tags=["vllm"],
)
async def render_chat_completion() -> Response:
    req = await parse_body(schemas.ChatRenderRequest)
    ctx = context()
    model = ctx.model_for(req.model)
    rendered = ctx.render_chat(
        model,
        req.messages,
        tools=req.tools,
        add_generation_prompt=req.add_generation_prompt,
        continue_final_message=req.continue_final_message,
        chat_template=req.chat_template,
        chat_template_kwargs=req.chat_template_kwargs,
        reasoning_effort=req.reasoning_effort,
        add_special_tokens=req.add_special_tokens,
    )
    return jsonify(
        _rendered(ctx, model, req, random_id("chatcmpl"), rendered.token_ids, rendered.text, "messages")
    )
