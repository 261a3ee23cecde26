"""POST /v1/embeddings."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from llmserve.errors import InvalidRequestError
from llmserve.protocols.common import json_response, now, parse_body, parse_prompts, random_id, resolve_model
from llmserve.protocols.openai.schemas import EmbeddingRequest
from llmserve.protocols.openai.serving import usage
from llmserve.state import get_state


async def create_embedding() -> Any:
    req = await parse_body(EmbeddingRequest)
    state = get_state()
    model = resolve_model(state, req.model, capability="embed")
    embedder = state.embedder
    if req.dimensions is not None and req.dimensions != embedder.dim:
        raise InvalidRequestError(
            f'Model "{model}" does not support matryoshka representation, changing output dimensions '
            f"will lead to poor results (it returns {embedder.dim} dimensions, {req.dimensions} were requested).",
            param="dimensions",
        )
    prompts = parse_prompts(
        req.input,
        embedder.tokenizer,
        add_special_tokens=req.add_special_tokens,
        truncate_prompt_tokens=req.truncate_prompt_tokens,
        max_model_len=embedder.max_model_len,
        param="input",
    )
    for prompt in prompts:
        if len(prompt.token_ids) > embedder.max_model_len:
            raise InvalidRequestError(
                f"This model's maximum context length is {embedder.max_model_len} tokens. However, you "
                f"requested {len(prompt.token_ids)} tokens in the input for embedding generation. Please "
                "reduce the length of the input.",
                param="input",
            )
    normalize = True if req.normalize is None else req.normalize
    vectors = await embedder.embed([p.token_ids for p in prompts], normalize=normalize)
    data = [
        {"index": i, "object": "embedding", "embedding": _encode(vector, req.encoding_format)}
        for i, vector in enumerate(vectors)
    ]
    prompt_tokens = sum(len(p.token_ids) for p in prompts)
    body = {
        "id": random_id("embd"),
        "object": "list",
        "created": now(),
        "model": model,
        "data": data,
        "usage": usage(prompt_tokens, 0),
    }
    return json_response(body)


def _encode(vector: Any, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # OpenAI's format: little-endian float32 bytes, base64-encoded
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]
