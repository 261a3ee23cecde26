"""/tokenize and /detokenize (vLLM's shapes).

The tokenizer is the one of the model the request names, or of the first served model.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, jsonify, request

from llmserve.api import (
    GENERATE,
    InvalidRequestError,
    UnsupportedError,
    context,
    document,
    parse_body,
    parse_json,
)
from llmserve.protocols.vllm import schemas

bp = Blueprint("vllm_tokenize", __name__)


class _Probe(schemas.Request):
    messages: Any = None


def is_token_ids(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def check_token_ids(tokenizer: Any, ids: list[int], param: str) -> None:
    """400 for ids outside the tokenizer's vocabulary (added tokens included)."""
    size = len(tokenizer)
    for i, token in enumerate(ids):
        if not 0 <= token < size:
            raise InvalidRequestError(
                f"{param}[{i}] = {token} is not a valid token id (vocabulary size {size})", param=param
            )


@bp.post("/tokenize")
@document(
    "Tokenize a prompt, or chat messages rendered with the chat template.",
    request=(schemas.TokenizeCompletionRequest, schemas.TokenizeChatRequest),
    response=schemas.TokenizeResponse,
    tags=["vllm"],
)
async def tokenize() -> Response:
    raw = await request.get_data(cache=True)
    is_chat = parse_json(raw, _Probe).messages is not None
    req = parse_json(raw, schemas.TokenizeChatRequest if is_chat else schemas.TokenizeCompletionRequest)
    ctx = context()
    model = ctx.model_for(req.model, None)
    tokenizer = model.tokenizer
    if isinstance(req, schemas.TokenizeChatRequest):
        if not model.supports(GENERATE):
            raise UnsupportedError("The embedding model has no chat template; tokenize a `prompt` instead.")
        ids = ctx.render_chat(
            model,
            req.messages,
            tools=req.tools,
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            chat_template=req.chat_template,
            chat_template_kwargs=req.chat_template_kwargs,
            add_special_tokens=req.add_special_tokens,
        ).token_ids
    else:
        ids = ctx.tokenize(model, req.prompt, add_special_tokens=req.add_special_tokens)
    body = schemas.TokenizeResponse(
        count=len(ids),
        max_model_len=model.max_model_len,
        tokens=ids,
        token_strs=tokenizer.convert_ids_to_tokens(ids) if req.return_token_strs else None,
    )
    return jsonify(body.model_dump())


@bp.post("/detokenize")
@document(
    "Turn token ids back into text.",
    request=schemas.DetokenizeRequest,
    response=schemas.DetokenizeResponse,
    tags=["vllm"],
)
async def detokenize() -> Response:
    req = await parse_body(schemas.DetokenizeRequest)
    ctx = context()
    return jsonify({"prompt": ctx.detokenize(ctx.model_for(req.model, None), req.tokens)})
