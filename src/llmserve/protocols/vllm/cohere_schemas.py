"""Wire models of the Cohere-shaped ``/v2/rerank`` and ``/v2/embed`` (Cohere's v2 API)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from llmserve.protocols.vllm.schemas import Request, RerankDocument, RerankDocumentIn, Wire

# --- Cohere v2 ------------------------------------------------------------------------------------------


class CohereRerankRequest(Request):
    model: str | None = None
    query: str
    documents: list[str | RerankDocumentIn] = Field(min_length=1)
    top_n: int | None = Field(None, ge=1)
    max_tokens_per_doc: int | None = Field(None, ge=1)
    return_documents: bool = False


class CohereApiVersion(Wire):
    version: str = "2"


class CohereBilledUnits(Wire):
    input_tokens: int | None = None
    search_units: int | None = None


class CohereMeta(Wire):
    api_version: CohereApiVersion = Field(default_factory=CohereApiVersion)
    billed_units: CohereBilledUnits | None = None


class CohereRerankResult(Wire):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class CohereRerankResponse(Wire):
    id: str
    results: list[CohereRerankResult]
    meta: CohereMeta


EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]


class CohereContent(Request):
    # text only (other parts are a 400 naming `inputs`): what the schema says
    model_config = ConfigDict(
        json_schema_extra={
            "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
            "required": ["type", "text"],
        }
    )

    type: str
    text: str | None = None


class CohereInput(Request):
    content: list[CohereContent]


class CohereEmbedRequest(Request):
    # at least one text, in `texts` or `inputs`
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["texts"], "properties": {"texts": {"type": "array", "minItems": 1}}},
                {"required": ["inputs"], "properties": {"inputs": {"type": "array", "minItems": 1}}},
            ]
        }
    )

    model: str | None = None
    texts: list[str] | None = None
    # refused (400 naming `images`): the embedding model takes text only
    images: list[str] | None = Field(None, json_schema_extra={"maxItems": 0})
    inputs: list[CohereInput] | None = None
    input_type: str | None = None
    embedding_types: list[EmbeddingType] | None = None
    truncate: Literal["NONE", "START", "END"] | None = "END"
    max_tokens: int | None = Field(None, ge=1)
    output_dimension: int | None = None


class CohereEmbeddings(Wire):
    model_config = ConfigDict(populate_by_name=True)

    float_: list[list[float]] | None = Field(None, alias="float")
    int8: list[list[int]] | None = None
    uint8: list[list[int]] | None = None
    binary: list[list[int]] | None = None
    ubinary: list[list[int]] | None = None
    base64: list[str] | None = None


class CohereEmbedResponse(Wire):
    id: str
    response_type: Literal["embeddings_by_type"] = "embeddings_by_type"
    embeddings: CohereEmbeddings
    texts: list[str]
    meta: CohereMeta
