"""Cohere v2 ``/v2/rerank`` and ``/v2/embed`` over the served embedding model, usable with the
official SDK: ``cohere.ClientV2(base_url=URL, api_key=KEY).rerank(...)`` / ``.embed(...)``.

Relevance scores are cosine similarities of normalized embeddings (in [-1, 1]), as in /rerank.
Embedding types: ``float``; ``base64`` (little-endian float32 bytes); ``int8``/``uint8`` (each
component of the unit vector scaled to the type's range and rounded); ``binary``/``ubinary``
(sign bits, 8 per byte, most significant first; ``binary`` = ``ubinary`` - 128).
"""

from __future__ import annotations

import base64

import numpy as np
from quart import Blueprint, Response, jsonify

from llmserve.api import InvalidRequestError, UnsupportedError, document, parse_body, random_id
from llmserve.protocols.vllm import cohere_schemas
from llmserve.protocols.vllm.pooling import (
    check_dimensions,
    document_texts,
    embed_texts,
    embedder_and_model,
    rank,
)

bp = Blueprint("vllm_cohere", __name__)

_TRUNCATE = {"NONE": "none", "START": "start", "END": "end"}


@bp.post("/v2/rerank")
@document(
    "Cohere v2 rerank: documents ordered by relevance to the query.",
    request=cohere_schemas.CohereRerankRequest,
    response=cohere_schemas.CohereRerankResponse,
    tags=["cohere"],
)
async def rerank_v2() -> Response:
    req = await parse_body(cohere_schemas.CohereRerankRequest)
    embedder, _ = embedder_and_model(req.model)
    docs = document_texts(req.documents)
    if not docs:
        raise InvalidRequestError("documents must not be empty", param="documents")
    specials = embedder.tokenizer.num_special_tokens_to_add(pair=False)
    limit = req.max_tokens_per_doc + specials if req.max_tokens_per_doc else None
    # Cohere truncates long documents rather than failing.
    vectors, lengths = await embed_texts(embedder, [req.query, *docs], limit, "end", "documents")
    results = []
    for i, value in rank(vectors[0], vectors[1:], req.top_n):
        item = {"index": i, "relevance_score": value}
        if req.return_documents:
            item["document"] = {"text": docs[i]}
        results.append(item)
    meta = {
        "api_version": {"version": "2"},
        "billed_units": {"search_units": 1, "input_tokens": sum(lengths)},
    }
    return jsonify({"id": random_id("rerank"), "results": results, "meta": meta})


def _texts(req: cohere_schemas.CohereEmbedRequest) -> list[str]:
    if req.images:
        raise UnsupportedError(
            "images are not supported: the embedding model takes text only", param="images"
        )
    texts = list(req.texts or [])
    for i, item in enumerate(req.inputs or []):
        parts = []
        for part in item.content:
            if part.type != "text" or part.text is None:
                raise UnsupportedError(
                    f"inputs[{i}]: only text content is supported, got {part.type!r}", param="inputs"
                )
            parts.append(part.text)
        texts.append("\n".join(parts))
    if not texts:
        raise InvalidRequestError("give `texts` or `inputs` to embed", param="texts")
    return texts


def _quantized(vectors: np.ndarray, kind: str) -> list:
    if kind == "float":
        return vectors.tolist()
    if kind == "base64":
        return [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    if kind == "int8":
        return np.clip(np.rint(vectors * 127), -128, 127).astype(int).tolist()
    if kind == "uint8":
        return np.clip(np.rint((vectors + 1) * 127.5), 0, 255).astype(int).tolist()
    bits = np.packbits(vectors > 0, axis=-1).astype(int)
    return (bits - 128).tolist() if kind == "binary" else bits.tolist()


@bp.post("/v2/embed")
@document(
    "Cohere v2 embed: embeddings of texts by type (float, int8, uint8, binary, ubinary, base64).",
    request=cohere_schemas.CohereEmbedRequest,
    response=cohere_schemas.CohereEmbedResponse,
    tags=["cohere"],
)
async def embed_v2() -> Response:
    req = await parse_body(cohere_schemas.CohereEmbedRequest)
    embedder, _ = embedder_and_model(req.model)
    check_dimensions(embedder, req.output_dimension, "output_dimension")
    texts = _texts(req)
    specials = embedder.tokenizer.num_special_tokens_to_add(pair=False)
    limit = req.max_tokens + specials if req.max_tokens else None
    vectors, lengths = await embed_texts(embedder, texts, limit, _TRUNCATE[req.truncate or "END"], "texts")
    kinds = list(dict.fromkeys(req.embedding_types or ["float"]))
    embeddings = {kind: _quantized(vectors, kind) for kind in kinds}
    meta = {"api_version": {"version": "2"}, "billed_units": {"input_tokens": sum(lengths)}}
    body = {
        "id": random_id("embed"),
        "response_type": "embeddings_by_type",
        "embeddings": embeddings,
        "texts": texts,
        "meta": meta,
    }
    return jsonify(body)
