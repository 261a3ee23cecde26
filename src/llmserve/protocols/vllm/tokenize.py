"""/tokenize and /detokenize (vLLM's shapes).

The tokenizer is the one of the model the request names: the generation model's by default, the
embedding model's when the request names it or when only an embedding model is served.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, jsonify, request

from llmserve.chat import render_chat
from llmserve.errors import InvalidRequestError, UnsupportedError
from llmserve.protocols.common import parse_body, parse_json, resolve_model
from llmserve.protocols.vllm import schemas
from llmserve.protocols.vllm.openapi import document
from llmserve.state import ServerState, get_state

bp = Blueprint("vllm_tokenize", __name__)


class _Probe(schemas.Request):
    messages: Any = None


def pick_model(state: ServerState, requested: str | None) -> tuple[Any, int, str]:
    """(tokenizer, max_model_len, kind) of the model a request names (404 for unknown names)."""
    if requested:
        kind = state.aliases.get(requested) or (
            "embed" if requested == state.embedding_model_name else "generate"
        )
        resolve_model(state, requested, kind)
    else:
        kind = "generate" if state.engine is not None else "embed"
    if kind == "generate" and state.engine is not None:
        return state.engine.tokenizer, state.engine.max_model_len, kind
    if state.embedder is not None:
        return state.embedder.tokenizer, state.embedder.max_model_len, "embed"
    raise UnsupportedError("No model is loaded, so there is no tokenizer.")


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
    state = get_state()
    tokenizer, max_model_len, kind = pick_model(state, req.model)
    if isinstance(req, schemas.TokenizeChatRequest):
        if kind != "generate":
            raise UnsupportedError("The embedding model has no chat template; tokenize a `prompt` instead.")
        _, ids = render_chat(
            state,
            req.messages,
            tools=req.tools,
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            chat_template=req.chat_template,
            chat_template_kwargs=req.chat_template_kwargs,
            add_special_tokens=req.add_special_tokens,
        )
    else:
        ids = list(tokenizer(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"])
    body = schemas.TokenizeResponse(
        count=len(ids),
        max_model_len=max_model_len,
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
    tokenizer, _, _ = pick_model(get_state(), req.model)
    check_token_ids(tokenizer, req.tokens, "tokens")
    return jsonify({"prompt": tokenizer.decode(req.tokens)})
