"""/v1/models and /v1/embeddings on a real server, through the official openai SDK."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
from transformers import AutoTokenizer

from llmserve.protocols.openai.schemas import EmbeddingResponse, ModelCard, ModelList


@pytest.fixture(scope="module")
def cards(server):
    response = httpx.get(server + "/v1/models")
    assert response.status_code == 200
    return response.json()["data"]


@pytest.fixture(scope="module")
def embedding_model(cards):
    return cards[-1]["id"]


@pytest.fixture(scope="module")
def mini_tok(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir)


def test_models_list_both_models(client, cards, smollm2_dir, minilm_dir):
    ids = [m.id for m in client.models.list().data]
    assert ids == [card["id"] for card in cards] and len(ids) == 2
    for card in cards:
        assert card["object"] == "model" and card["owned_by"] == "llmserve"
        assert card["parent"] is None and card["permission"] == [] and card["created"] > 0
    chat, embed = cards
    assert chat["max_model_len"] == 2048 and embed["max_model_len"] == 512
    assert "smollm2" in chat["root"].lower() and "minilm" in embed["root"].lower()


def test_retrieve_model_and_unknown_404(client, cards):
    assert client.models.retrieve(cards[0]["id"]).id == cards[0]["id"]
    with pytest.raises(openai.NotFoundError, match="The model `nope` does not exist."):
        client.models.retrieve("nope")


def test_embeddings_float_and_base64_agree(server, client, embedding_model, mini_tok):
    texts = ["A cat sat on the mat.", "Quantum chromodynamics"]
    floats = httpx.post(
        server + "/v1/embeddings", json={"model": embedding_model, "input": texts, "encoding_format": "float"}
    ).json()
    raw = httpx.post(
        server + "/v1/embeddings",
        json={"model": embedding_model, "input": texts, "encoding_format": "base64"},
    ).json()
    for f, b in zip(floats["data"], raw["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert len(f["embedding"]) == 384
        np.testing.assert_allclose(decoded, np.asarray(f["embedding"], dtype=np.float32), rtol=0, atol=0)
    assert floats["usage"]["prompt_tokens"] == sum(len(mini_tok(t).input_ids) for t in texts)
    # the SDK asks for base64 and decodes it
    sdk = client.embeddings.create(model=embedding_model, input=texts)
    np.testing.assert_allclose(sdk.data[1].embedding, floats["data"][1]["embedding"], atol=1e-7)
    # normalized, and related texts are closer than unrelated ones
    a, b = (np.asarray(d["embedding"]) for d in floats["data"])
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-4)
    c = np.asarray(
        client.embeddings.create(model=embedding_model, input="A kitten on a rug.").data[0].embedding
    )
    assert a @ c > b @ c


def test_embeddings_token_ids_and_truncation(client, embedding_model, mini_tok):
    ids = mini_tok("hello world").input_ids
    by_ids = client.embeddings.create(model=embedding_model, input=[ids], encoding_format="float")
    by_text = client.embeddings.create(model=embedding_model, input="hello world", encoding_format="float")
    np.testing.assert_allclose(by_ids.data[0].embedding, by_text.data[0].embedding, atol=1e-6)
    out = client.embeddings.create(
        model=embedding_model, input="one two three four five six", extra_body={"truncate_prompt_tokens": 3}
    )
    assert out.usage.prompt_tokens == 3


def test_embeddings_dimensions(client, embedding_model):
    assert (
        len(client.embeddings.create(model=embedding_model, input="x", dimensions=384).data[0].embedding)
        == 384
    )
    with pytest.raises(openai.BadRequestError, match="matryoshka") as err:
        client.embeddings.create(model=embedding_model, input="x", dimensions=64)
    assert err.value.body["param"] == "dimensions"


def test_embeddings_too_long_input_is_400_with_numbers(client, embedding_model):
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=embedding_model, input="word " * 600)
    assert "512" in err.value.message and "602" in err.value.message


def test_embeddings_with_the_chat_model_name_is_400(client, cards):
    with pytest.raises(openai.BadRequestError, match="does not support the Embeddings API"):
        client.embeddings.create(model=cards[0]["id"], input="x")


def test_responses_match_the_documented_schemas(server, embedding_model, cards):
    ModelList.model_validate(httpx.get(server + "/v1/models").json())
    ModelCard.model_validate(httpx.get(server + "/v1/models/" + cards[0]["id"]).json())
    for fmt in ("float", "base64"):
        body = {"model": embedding_model, "input": ["a", "b"], "encoding_format": fmt}
        EmbeddingResponse.model_validate(httpx.post(server + "/v1/embeddings", json=body).json())
