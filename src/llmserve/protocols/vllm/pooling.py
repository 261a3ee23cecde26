"""vLLM's pooling-model routes over the served embedding model: /pooling, /score, /v1/score,
/rerank, /v1/rerank, and /classify (which always explains that no classifier is loaded).

Score and rerank are bi-encoder scores: the cosine similarity of the two texts' normalized
embeddings, the same vectors /v1/embeddings returns. Scores are in [-1, 1].
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from quart import Blueprint, Response, jsonify

from llmserve.api import (
    EMBED,
    InvalidRequestError,
    UnsupportedError,
    bounded_text,
    check_text_fits,
    context,
    document,
    now,
    parse_body,
    random_id,
)
from llmserve.protocols.vllm import schemas
from llmserve.protocols.vllm.tokenize import check_token_ids, is_token_ids

bp = Blueprint("vllm_pooling", __name__)
classify_bp = Blueprint("vllm_classify", __name__)

Truncate = Literal["none", "start", "end"]


# --- shared with the Cohere routes ---------------------------------------------------------------------


def embedder_and_model(requested: str | None) -> tuple[Any, str]:
    """The embedding service of the model a request names, and the name to answer with."""
    model = context().model_for(requested, EMBED)
    return model.embedder, model.answer_name(requested)


def check_dimensions(embedder: Any, requested: int | None, param: str) -> None:
    """Our embedding models have one size (no matryoshka truncation): reject any other."""
    if requested is not None and requested != embedder.dim:
        raise UnsupportedError(
            f"{param}={requested} is not supported: the model's embeddings have {embedder.dim}", param=param
        )


def token_limit(embedder: Any, truncate_prompt_tokens: int | None) -> tuple[int, Truncate]:
    """vLLM's truncate_prompt_tokens (keep the last k tokens; -1 = max_model_len) as a limit."""
    max_len = embedder.max_model_len
    if truncate_prompt_tokens is None:
        return max_len, "none"
    keep = max_len if truncate_prompt_tokens == -1 else truncate_prompt_tokens
    if not 1 <= keep <= max_len:
        raise InvalidRequestError(
            f"truncate_prompt_tokens must be -1 or between 1 and max_model_len ({max_len}), got {truncate_prompt_tokens}",
            param="truncate_prompt_tokens",
        )
    return keep, "start"


def encode_texts(
    embedder: Any,
    texts: list[str],
    limit: int | None = None,
    truncate: Truncate = "none",
    param: str = "input",
) -> list[list[int]]:
    """Token ids (special tokens included, as /v1/embeddings tokenizes) of each text, at most
    ``limit`` tokens each. Longer texts are an error (``truncate="none"``, vLLM's message) or lose
    their start or end; the model's [CLS]/[SEP]-style tokens are always kept.
    """
    tokenizer = embedder.tokenizer
    limit = min(limit or embedder.max_model_len, embedder.max_model_len)
    # a text far past the limit: refused before tokenizing, or only the part kept is tokenized
    if truncate == "none":
        for text in texts:
            check_text_fits(tokenizer, text, limit, param)
    else:
        texts = [bounded_text(tokenizer, t, limit, "start" if truncate == "end" else "end") for t in texts]
    out = []
    for text, ids in zip(texts, tokenizer(texts)["input_ids"] if texts else [], strict=True):
        ids = list(ids)
        if len(ids) > limit:
            if truncate == "none":
                raise InvalidRequestError(
                    f"This model's maximum context length is {limit} tokens. However, you requested {len(ids)} "
                    "tokens in the input for embedding generation. Please reduce the length of the input.",
                    param=param,
                )
            plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            extra = len(ids) - len(plain)  # special tokens around the text
            start = next((p for p in range(extra + 1) if ids[p : p + len(plain)] == plain), 0)
            room = max(1, limit - extra)
            kept = plain[:room] if truncate == "end" else plain[len(plain) - room :]
            ids = ids[:start] + kept + ids[start + len(plain) :]
        out.append(ids)
    return out


async def embed_texts(
    embedder: Any,
    texts: list[str],
    limit: int | None = None,
    truncate: Truncate = "none",
    param: str = "input",
) -> tuple[np.ndarray, list[int]]:
    """Normalized embeddings ``[len(texts), dim]`` (float64) and each text's token count.
    Repeated texts are embedded once."""
    unique = list(dict.fromkeys(texts))
    ids = encode_texts(embedder, unique, limit, truncate, param)
    vectors = (
        np.asarray(await embedder.embed(ids, normalize=True), dtype=np.float64) if ids else np.zeros((0, 0))
    )
    row = {text: i for i, text in enumerate(unique)}
    tokens = {text: len(t) for text, t in zip(unique, ids, strict=True)}
    picked = vectors[[row[t] for t in texts]] if texts else np.zeros((0, embedder.dim))
    return picked, [tokens[t] for t in texts]


def rank(query: np.ndarray, docs: np.ndarray, top_n: int | None) -> list[tuple[int, float]]:
    """(document index, cosine score), best first; ties keep the documents' order."""
    scores = docs @ query if len(docs) else np.zeros(0)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if top_n:
        order = order[:top_n]
    return [(i, float(scores[i])) for i in order]


def document_texts(documents: list[str | schemas.RerankDocumentIn]) -> list[str]:
    return [d if isinstance(d, str) else d.text for d in documents]


# --- /pooling -------------------------------------------------------------------------------------------


@bp.post("/pooling")
@document(
    "Pooled output (the sentence embedding) of each input, in vLLM's pooling shape.",
    request=schemas.PoolingRequest,
    response=schemas.PoolingResponse,
    tags=["vllm"],
)
async def pooling() -> Response:
    req = await parse_body(schemas.PoolingRequest)
    embedder, model = embedder_and_model(req.model)
    check_dimensions(embedder, req.dimensions, "dimensions")
    limit, truncate = token_limit(embedder, req.truncate_prompt_tokens)
    inputs = req.input
    if isinstance(inputs, str) or is_token_ids(inputs):
        inputs = [inputs]  # type: ignore[list-item]
    if not inputs:
        raise InvalidRequestError("input must not be empty", param="input")
    texts = [x for x in inputs if isinstance(x, str)]
    encoded = iter(encode_texts(embedder, texts, limit, truncate))
    ids: list[list[int]] = []
    for item in inputs:
        if isinstance(item, str):
            ids.append(next(encoded))
            continue
        check_token_ids(embedder.tokenizer, item, "input")
        if len(item) > limit:
            if truncate == "none":
                raise InvalidRequestError(
                    f"This model's maximum context length is {limit} tokens. However, you requested "
                    f"{len(item)} tokens in the input for embedding generation. Please reduce the length of the input.",
                    param="input",
                )
            item = item[-limit:]
        if not item:
            raise InvalidRequestError("input token lists must not be empty", param="input")
        ids.append(list(item))
    vectors = await embedder.embed(ids, normalize=req.normalize)
    data = []
    for i, vector in enumerate(vectors):
        if req.encoding_format == "base64":
            payload: Any = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        else:
            payload = [float(x) for x in vector]
        data.append({"index": i, "object": "pooling", "data": payload})
    used = sum(len(t) for t in ids)
    return jsonify(_list_body("pool", model, data, used))


# --- /score ---------------------------------------------------------------------------------------------


@bp.post("/score")
@bp.post("/v1/score")
@document(
    "Similarity of text_1 and text_2 (1:1, 1:N or N:N): cosine of their embeddings.",
    request=schemas.ScoreRequest,
    response=schemas.ScoreResponse,
    tags=["vllm"],
)
async def score() -> Response:
    req = await parse_body(schemas.ScoreRequest)
    embedder, model = embedder_and_model(req.model)
    left = [req.text_1] if isinstance(req.text_1, str) else list(req.text_1)
    right = [req.text_2] if isinstance(req.text_2, str) else list(req.text_2)
    if not left or not right:
        raise InvalidRequestError(
            "text_1 and text_2 must not be empty", param="text_1" if not left else "text_2"
        )
    if len(left) == 1:
        pairs = [(0, j) for j in range(len(right))]
    elif len(left) == len(right):
        pairs = [(i, i) for i in range(len(left))]
    else:
        raise InvalidRequestError(
            f"Input lengths must be either 1:1, 1:N or N:N, got {len(left)}:{len(right)}", param="text_2"
        )
    limit, truncate = token_limit(embedder, req.truncate_prompt_tokens)
    first, first_lengths = await embed_texts(embedder, left, limit, truncate, "text_1")
    second, second_lengths = await embed_texts(embedder, right, limit, truncate, "text_2")
    vectors, lengths = np.concatenate([first, second]), first_lengths + second_lengths
    data, used = [], 0
    for index, (i, j) in enumerate(pairs):
        value = float(vectors[i] @ vectors[len(left) + j])
        data.append({"index": index, "object": "score", "score": value})
        used += lengths[i] + lengths[len(left) + j]
    return jsonify(_list_body("score", model, data, used))


# --- /rerank (Jina shape) -----------------------------------------------------------------------------


@bp.post("/rerank")
@bp.post("/v1/rerank")
@document(
    "Rank documents by relevance to a query (Jina-style; cosine of embeddings).",
    request=schemas.RerankRequest,
    response=schemas.RerankResponse,
    tags=["vllm"],
)
async def rerank() -> Response:
    req = await parse_body(schemas.RerankRequest)
    embedder, model = embedder_and_model(req.model)
    docs = document_texts(req.documents)
    limit, truncate = token_limit(embedder, req.truncate_prompt_tokens)
    vectors, lengths = await embed_texts(embedder, [req.query, *docs], limit, truncate, "documents")
    results = [
        {
            "index": i,
            "document": {"text": docs[i]} if req.return_documents else None,
            "relevance_score": value,
        }
        for i, value in rank(vectors[0], vectors[1:], req.top_n)
    ]
    usage = {"total_tokens": sum(lengths)}
    return jsonify({"id": random_id("rerank"), "model": model, "usage": usage, "results": results})


# --- /classify ------------------------------------------------------------------------------------------


@classify_bp.post("/classify")
@document(
    "Classification (needs a sequence-classification model; none is served).",
    request=schemas.ClassifyRequest,
    tags=["vllm"],
)
async def classify() -> Response:
    raise UnsupportedError(
        "The model does not support Classification API: no classification model is loaded "
        "(the server runs a generation and/or an embedding model).",
        code="model_not_supported",
    )


def _list_body(prefix: str, model: str, data: list, used: int) -> dict:
    """vLLM's list envelope for pooling-style answers; usage counts input tokens only."""
    return {
        "id": random_id(prefix),
        "object": "list",
        "created": now(),
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": used, "total_tokens": used, "completion_tokens": 0},
    }
