"""vLLM's own routes on a real server: probes, tokenize, generate, metrics, score/rerank/pooling,
the Cohere v2 routes (through the official cohere SDK), render, OpenAPI and the docs page."""

from __future__ import annotations

import base64
import json
import re
import time

import cohere
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import llmserve

CHAT = [{"role": "user", "content": "Say hi to Paris."}]


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def models(http):
    cards = http.get("/v1/models").json()["data"]
    return cards[0]["id"], cards[-1]["id"]  # (generation model, embedding model)


@pytest.fixture(scope="module")
def co(server):
    return cohere.ClientV2(base_url=server, api_key="unused", timeout=120)


def embeddings(http, model, texts):
    body = http.post("/v1/embeddings", json={"model": model, "input": texts}).json()
    return np.array([item["embedding"] for item in sorted(body["data"], key=lambda d: d["index"])])


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- probes -----------------------------------------------------------------------------------------------


def test_health_ping_version_load(http):
    health = http.get("/health")
    assert health.status_code == 200 and health.content == b""
    assert http.get("/ping").status_code == 200
    assert http.post("/ping").status_code == 200
    assert http.get("/version").json() == {"version": llmserve.__version__}
    load = http.get("/load").json()
    assert set(load) == {"server_load"} and load["server_load"] >= 0
    assert http.get("/is_sleeping").json() == {"is_sleeping": False}


def test_sleep_and_wake_up(http):
    try:
        assert http.post("/sleep", params={"level": 1}).status_code == 200
        assert http.get("/is_sleeping").json() == {"is_sleeping": True}
    finally:
        assert http.post("/wake_up").status_code == 200
    assert http.get("/is_sleeping").json() == {"is_sleeping": False}
    bad = http.post("/sleep", params={"level": "deep"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "level"


def test_load_counts_a_streaming_request(http):
    body = {
        "prompt": "Count: one, two,",
        "max_tokens": 24,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    with http.stream("POST", "/generate", json=body) as stream:
        lines = stream.iter_lines()  # keep a reference: a collected iterator closes the stream
        assert json.loads(next(lines))["token_ids"][0]
        assert http.get("/load").json()["server_load"] >= 1
    for _ in range(100):  # the aborted stream is released once its body is closed
        if http.get("/load").json()["server_load"] == 0:
            break
        time.sleep(0.1)
    assert http.get("/load").json()["server_load"] == 0


# --- tokenize / detokenize ----------------------------------------------------------------------------


def test_tokenize_detokenize_prompt_round_trip(http):
    prompt = "Hello world, here is a café ☕ test."
    body = http.post("/tokenize", json={"prompt": prompt, "return_token_strs": True}).json()
    assert body["count"] == len(body["tokens"]) == len(body["token_strs"]) > 5
    assert body["max_model_len"] == 2048
    assert all(isinstance(t, int) for t in body["tokens"])
    assert http.post("/detokenize", json={"tokens": body["tokens"]}).json() == {"prompt": prompt}
    plain = http.post("/tokenize", json={"prompt": prompt}).json()
    assert plain["token_strs"] is None and plain["tokens"] == body["tokens"]


def test_tokenize_messages_with_chat_template(http):
    with_prompt = http.post("/tokenize", json={"messages": CHAT}).json()
    without = http.post("/tokenize", json={"messages": CHAT, "add_generation_prompt": False}).json()
    assert with_prompt["count"] > without["count"]
    assert with_prompt["tokens"][: without["count"]] == without["tokens"]
    text = http.post("/detokenize", json={"tokens": with_prompt["tokens"]}).json()["prompt"]
    assert "Say hi to Paris." in text and text.endswith("<|im_start|>assistant\n")
    # continue_final_message leaves the assistant turn open for the model to continue
    partial = CHAT + [{"role": "assistant", "content": "Bonjour"}]
    cont = http.post(
        "/tokenize",
        json={"messages": partial, "add_generation_prompt": False, "continue_final_message": True},
    ).json()
    assert http.post("/detokenize", json={"tokens": cont["tokens"]}).json()["prompt"].endswith("Bonjour")


def test_tokenize_with_the_embedding_models_tokenizer(http, models):
    body = http.post("/tokenize", json={"model": models[1], "prompt": "hello world"}).json()
    assert body["max_model_len"] == 512
    assert body["tokens"][0] == 101 and body["tokens"][-1] == 102  # BERT's [CLS] ... [SEP]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/detokenize", {"tokens": [1, -5]}, "tokens"),
        ("/detokenize", {"tokens": [10**9]}, "tokens"),
        ("/detokenize", {"tokens": "abc"}, "tokens"),
        ("/tokenize", {"prompt": 42}, "prompt"),
        ("/tokenize", {"prompt": "hi", "model": "no-such-model"}, "model"),
        ("/tokenize", {"messages": CHAT, "continue_final_message": True}, None),
    ],
)
def test_tokenize_bad_input_is_a_client_error(http, path, body, param):
    response = http.post(path, json=body)
    assert response.status_code in (400, 404)
    error = response.json()["error"]
    assert error["message"] and error["param"] == param


# --- generate ----------------------------------------------------------------------------------------------


def test_generate_non_streaming(http):
    prompt = "The capital of France is"
    body = http.post("/generate", json={"prompt": prompt, "max_tokens": 3, "temperature": 0}).json()
    assert body["text"][0].startswith(prompt) and len(body["text"][0]) > len(prompt)
    assert 1 <= len(body["token_ids"][0]) <= 3
    assert body["finish_reason"][0] in ("length", "stop")
    assert body["prompt_token_ids"] == http.post("/tokenize", json={"prompt": prompt}).json()["tokens"]
    again = http.post(
        "/generate", json={"prompt_token_ids": body["prompt_token_ids"], "max_tokens": 3, "temperature": 0}
    )
    assert again.json()["token_ids"] == body["token_ids"]
    assert prompt + again.json()["text"][0] == body["text"][0]


def test_generate_streams_ndjson_and_sse(http):
    request = {"prompt": "One, two, three,", "max_tokens": 4, "temperature": 0, "stream": True}
    whole = http.post("/generate", json={**request, "stream": False}).json()
    with http.stream("POST", "/generate", json=request) as stream:
        assert stream.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in stream.iter_lines() if line]
    assert len(lines) >= 2 and lines[-1]["finish_reason"][0] in ("length", "stop")
    assert lines[-1]["text"] == whole["text"] and lines[-1]["token_ids"] == whole["token_ids"]
    assert all(
        len(a["token_ids"][0]) <= len(b["token_ids"][0]) for a, b in zip(lines, lines[1:], strict=False)
    )
    with http.stream("POST", "/generate", json=request, headers={"Accept": "text/event-stream"}) as stream:
        events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["text"] == whole["text"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 2}, None),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "top_p": "high"}, "top_p"),
    ],
)
def test_generate_bad_input_is_400(http, body, param):
    response = http.post("/generate", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


# --- metrics -------------------------------------------------------------------------------------------------


def scrape(http):
    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    values: dict[str, float] = {}
    labels: dict[str, list[dict]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
            labels.setdefault(sample.name, []).append(sample.labels)
    return values, labels


def test_metrics_names_and_counters_increase(http, models):
    before, _ = scrape(http)
    prompt = "Metrics are counted here"
    prompt_len = http.post("/tokenize", json={"prompt": prompt}).json()["count"]
    out = http.post("/generate", json={"prompt": prompt, "max_tokens": 3, "temperature": 0}).json()
    after, labels = scrape(http)
    for name in (
        "llmserve:num_requests_running",
        "llmserve:num_requests_waiting",
        "llmserve:kv_cache_usage_perc",
        "llmserve:prefix_cache_queries_total",
        "llmserve:prefix_cache_hits_total",
        "llmserve:prompt_tokens_total",
        "llmserve:generation_tokens_total",
        "llmserve:request_success_total",
        "llmserve:time_to_first_token_seconds_bucket",
        "llmserve:inter_token_latency_seconds_count",
        "llmserve:e2e_request_latency_seconds_sum",
        "llmserve:request_queue_time_seconds_count",
    ):
        assert name in after, name
        assert all(lab.get("model_name") == models[0] for lab in labels[name]), name
    assert {lab["finished_reason"] for lab in labels["llmserve:request_success_total"]} >= {"stop", "length"}
    assert after["llmserve:prompt_tokens_total"] >= before["llmserve:prompt_tokens_total"] + prompt_len
    generated = len(out["token_ids"][0])
    assert after["llmserve:generation_tokens_total"] >= before["llmserve:generation_tokens_total"] + generated
    assert after["llmserve:request_success_total"] >= before["llmserve:request_success_total"] + 1
    for name in ("time_to_first_token_seconds_count", "e2e_request_latency_seconds_count"):
        assert after["llmserve:" + name] >= before["llmserve:" + name] + 1
    assert 0.0 <= after["llmserve:kv_cache_usage_perc"] <= 1.0


# --- score, rerank, pooling --------------------------------------------------------------------------------

TEXTS = ["A cat sits on the mat.", "A kitten naps on a rug.", "Stock prices fell sharply today."]


def test_score_equals_cosine_of_embeddings(http, models):
    vectors = embeddings(http, models[1], TEXTS)
    expected = [cosine(vectors[0], vectors[1]), cosine(vectors[0], vectors[2])]
    for path in ("/score", "/v1/score"):
        body = http.post(path, json={"model": models[1], "text_1": TEXTS[0], "text_2": TEXTS[1:]}).json()
        assert body["object"] == "list" and body["model"] == models[1] and body["id"]
        assert [d["index"] for d in body["data"]] == [0, 1] and {d["object"] for d in body["data"]} == {
            "score"
        }
        assert [d["score"] for d in body["data"]] == pytest.approx(expected, abs=1e-4)
        assert body["usage"]["prompt_tokens"] > 0
    assert expected[0] > expected[1]  # the model agrees cats are closer to kittens than to stocks
    pairwise = http.post("/score", json={"text_1": TEXTS[:2], "text_2": TEXTS[1:]}).json()
    assert [d["score"] for d in pairwise["data"]] == pytest.approx(
        [expected[0], cosine(vectors[1], vectors[2])], abs=1e-4
    )
    bad = http.post("/score", json={"text_1": TEXTS[:2], "text_2": TEXTS})
    assert bad.status_code == 400 and "1:1, 1:N or N:N" in bad.json()["error"]["message"]


def test_rerank_order_top_n_and_documents(http, models):
    query = "Where do cats like to sleep?"
    scores = [d["score"] for d in http.post("/score", json={"text_1": query, "text_2": TEXTS}).json()["data"]]
    order = sorted(range(3), key=lambda i: -scores[i])
    for path in ("/rerank", "/v1/rerank"):
        body = http.post(
            path, json={"model": models[1], "query": query, "documents": TEXTS, "top_n": 2}
        ).json()
        assert body["model"] == models[1] and body["usage"]["total_tokens"] > 0
        results = body["results"]
        assert [r["index"] for r in results] == order[:2]
        assert [r["relevance_score"] for r in results] == pytest.approx(
            [scores[i] for i in order[:2]], abs=1e-5
        )
        assert [r["document"]["text"] for r in results] == [TEXTS[i] for i in order[:2]]
    everything = http.post(
        "/rerank", json={"query": query, "documents": TEXTS, "return_documents": False}
    ).json()
    assert [r["index"] for r in everything["results"]] == order
    assert all(r["document"] is None for r in everything["results"])


def test_pooling_returns_the_embeddings(http, models):
    vectors = embeddings(http, models[1], TEXTS[:2])
    body = http.post("/pooling", json={"model": models[1], "input": TEXTS[:2]}).json()
    assert body["object"] == "list" and [d["object"] for d in body["data"]] == ["pooling", "pooling"]
    assert np.allclose([d["data"] for d in body["data"]], vectors, atol=1e-5)
    ids = http.post("/tokenize", json={"model": models[1], "prompt": TEXTS[0]}).json()["tokens"]
    packed = http.post("/pooling", json={"input": [ids], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["data"]), dtype="<f4")
    assert np.allclose(decoded, vectors[0], atol=1e-5)
    bad = http.post("/pooling", json={"input": {"text": "x"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"


def test_long_inputs_fail_or_truncate(http, co, models):
    long_text = "lorem ipsum " * 400  # well over MiniLM's 512 tokens
    too_long = http.post("/score", json={"text_1": long_text, "text_2": "short"})
    assert (
        too_long.status_code == 400 and "maximum context length is 512" in too_long.json()["error"]["message"]
    )
    cut = http.post("/score", json={"text_1": long_text, "text_2": "short", "truncate_prompt_tokens": -1})
    assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] <= 512 + 3
    result = co.embed(
        texts=[long_text], model=models[1], input_type="search_query", embedding_types=["float"]
    )
    assert len(result.embeddings.float_[0]) == 384  # Cohere's default truncate="END"
    with pytest.raises(cohere.errors.BadRequestError):
        co.embed(
            texts=[long_text],
            model=models[1],
            input_type="search_query",
            embedding_types=["float"],
            truncate="NONE",
        )


def test_classify_explains_no_classifier(http):
    response = http.post("/classify", json={"input": "I love this!"})
    assert response.status_code == 400
    assert "classification" in response.json()["error"]["message"].lower()


# --- Cohere v2 through the official SDK -----------------------------------------------------------------------


def test_cohere_rerank_sdk(http, co, models):
    query = "Where do cats like to sleep?"
    jina = http.post("/rerank", json={"query": query, "documents": TEXTS}).json()["results"]
    result = co.rerank(model=models[1], query=query, documents=TEXTS, top_n=2)
    assert [r.index for r in result.results] == [r["index"] for r in jina[:2]]
    assert [r.relevance_score for r in result.results] == pytest.approx(
        [r["relevance_score"] for r in jina[:2]]
    )
    assert result.id and result.meta.api_version.version == "2"
    with pytest.raises(cohere.errors.NotFoundError):
        co.rerank(model="no-such-model", query=query, documents=TEXTS)


def test_cohere_embed_sdk(http, co, models):
    vectors = embeddings(http, models[1], TEXTS[:2])
    result = co.embed(
        texts=TEXTS[:2],
        model=models[1],
        input_type="search_document",
        embedding_types=["float", "int8", "ubinary"],
    )
    assert result.texts == TEXTS[:2]
    assert np.allclose(result.embeddings.float_, vectors, atol=1e-5)
    int8 = np.array(result.embeddings.int8)
    assert int8.shape == vectors.shape and int8.min() >= -128 and int8.max() <= 127
    assert np.array(result.embeddings.ubinary).shape == (2, vectors.shape[1] // 8)
    with pytest.raises(cohere.errors.BadRequestError):
        co.embed(texts=["x"], model=models[1], input_type="search_document", output_dimension=7)


# --- render ---------------------------------------------------------------------------------------------------


def test_render_returns_the_same_ids_as_tokenize(http, models):
    chat = http.post("/v1/chat/completions/render", json={"messages": CHAT, "temperature": 0.25}).json()
    assert chat["token_ids"] == http.post("/tokenize", json={"messages": CHAT}).json()["tokens"]
    assert chat["model"] == models[0] and chat["request_id"].startswith("chatcmpl-")
    assert chat["sampling_params"]["temperature"] == 0.25 and chat["prompt"].endswith(
        "<|im_start|>assistant\n"
    )
    items = http.post(
        "/v1/completions/render", json={"prompt": ["Hello world", "Bye"], "max_tokens": 5}
    ).json()
    assert [item["token_ids"] for item in items] == [
        http.post("/tokenize", json={"prompt": p}).json()["tokens"] for p in ("Hello world", "Bye")
    ]
    assert all(item["sampling_params"]["max_tokens"] == 5 for item in items)
    missing = http.post("/v1/chat/completions/render", json={"model": "no-such-model", "messages": CHAT})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"


# --- OpenAPI and docs -----------------------------------------------------------------------------------------


def test_openapi_lists_routes_with_resolvable_schemas(http):
    spec = http.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.") and spec["info"]["version"] == llmserve.__version__
    paths = spec["paths"]
    for path in (
        "/health",
        "/tokenize",
        "/detokenize",
        "/generate",
        "/metrics",
        "/score",
        "/v1/rerank",
        "/v2/rerank",
        "/v2/embed",
        "/pooling",
        "/v1/chat/completions/render",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
    ):
        assert path in paths, path
    schemas = spec["components"]["schemas"]
    assert "TokenizeChatRequest" in schemas and "ChatCompletionRequest" in schemas
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(spec)))
    assert refs and refs <= set(schemas)
    body = paths["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}


def test_docs_page_works_offline(http):
    page = http.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "openapi.json" in page.text
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page.text, re.IGNORECASE)
    assert "<script src" not in page.text and "<link" not in page.text


async def test_health_is_503_when_the_engine_died():
    from types import SimpleNamespace

    from llmserve.config import Config
    from llmserve.plugins import load_plugins
    from llmserve.server.app import create_app
    from llmserve.server.context import ProtocolContext
    from llmserve.server.registry import ModelRegistry, ServedModel

    engine = SimpleNamespace(is_dead=False, is_sleeping=False)
    config = Config()
    model = ServedModel("m", "/m", "generate", None, 64, engine=engine)
    app = create_app(config, ProtocolContext(config, load_plugins(), ModelRegistry([model])))
    client = app.test_client()
    assert (await client.get("/health")).status_code == 200
    engine.is_dead = True
    assert (await client.get("/health")).status_code == 503
    assert (await client.get("/ping")).status_code == 503
