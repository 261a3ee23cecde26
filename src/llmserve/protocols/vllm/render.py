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

from llmserve.chat import render_chat
from llmserve.engine.sampling import SamplingParams
from llmserve.errors import UnsupportedError
from llmserve.protocols.common import parse_body, parse_prompts, random_id, resolve_model, to_sampling_params
from llmserve.protocols.vllm import schemas
from llmserve.protocols.vllm.openapi import document
from llmserve.state import get_state

bp = Blueprint("vllm_render", __name__)


def sampling_dict(params: SamplingParams) -> dict[str, Any]:
    data = asdict(params)
    data.pop("constraint", None)  # a live object, not wire data
    data["logit_bias"] = {str(k): v for k, v in params.logit_bias.items()}
    return data


def _engine():
    engine = get_state().engine
    if engine is None:
        raise UnsupportedError("No generation model is loaded.")
    return engine


def _rendered(req: Any, request_id: str, model: str, ids: list[int], text: str | None) -> dict[str, Any]:
    engine = _engine()
    params = to_sampling_params(req, engine.generation_defaults, engine.max_model_len, len(ids))
    engine.validate(ids, params)
    return schemas.RenderedRequest(
        request_id=request_id,
        model=model,
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
    response=schemas.RenderedRequest,
    tags=["vllm"],
)
async def render_completion() -> Response:
    req = await parse_body(schemas.CompletionRenderRequest)
    state = get_state()
    engine = _engine()
    model = resolve_model(state, req.model, "generate")
    prompts = parse_prompts(
        req.prompt,
        engine.tokenizer,
        add_special_tokens=req.add_special_tokens,
        truncate_prompt_tokens=req.truncate_prompt_tokens,
        max_model_len=engine.max_model_len,
    )
    base = random_id("cmpl")
    items = [
        _rendered(req, base if len(prompts) == 1 else f"{base}-{i}", model, p.token_ids, p.text)
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
    state = get_state()
    _engine()
    model = resolve_model(state, req.model, "generate")
    text, ids = render_chat(
        state,
        req.messages,
        tools=req.tools,
        add_generation_prompt=req.add_generation_prompt,
        continue_final_message=req.continue_final_message,
        chat_template=req.chat_template,
        chat_template_kwargs=req.chat_template_kwargs,
        add_special_tokens=req.add_special_tokens,
    )
    return jsonify(_rendered(req, random_id("chatcmpl"), model, ids, text))
