"""POST /v1/embeddings."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from llmserve.api import EMBED, InvalidRequestError, context, json_response, now, parse_body, random_id
from llmserve.protocols.openai.schemas import EmbeddingRequest
from llmserve.protocols.openai.serving import usage


async def create_embedding() -> Any:
    req = await parse_body(EmbeddingRequest)
    ctx = context()
    model = ctx.model_for(req.model, EMBED)
    name = model.answer_name(req.model)
    dim = model.embedder.dim
    if req.dimensions is not None and req.dimensions != dim:
        raise InvalidRequestError(
            f'Model "{name}" does not support matryoshka representation, changing output dimensions '
            f"will lead to poor results (it returns {dim} dimensions, {req.dimensions} were requested).",
            param="dimensions",
        )
    prompts = ctx.prompts(
        model,
        req.input,
        add_special_tokens=req.add_special_tokens,
        truncate_prompt_tokens=req.truncate_prompt_tokens,
        param="input",
    )
    for prompt in prompts:
        if len(prompt.token_ids) > model.max_model_len:
            raise InvalidRequestError(
                f"This model's maximum context length is {model.max_model_len} tokens. However, you "
                f"requested {len(prompt.token_ids)} tokens in the input for embedding generation. Please "
                "reduce the length of the input.",
                param="input",
            )
    normalize = True if req.normalize is None else req.normalize
    vectors = await ctx.embed(model, [p.token_ids for p in prompts], normalize=normalize)
    data = [
        {"index": i, "object": "embedding", "embedding": _encode(vector, req.encoding_format)}
        for i, vector in enumerate(vectors)
    ]
    prompt_tokens = sum(len(p.token_ids) for p in prompts)
    body = {
        "id": random_id("embd"),
        "object": "list",
        "created": now(),
        "model": name,
        "data": data,
        "usage": usage(prompt_tokens, 0),
    }
    return json_response(body)


def _encode(vector: Any, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # OpenAI's format: little-endian float32 bytes, base64-encoded
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]
