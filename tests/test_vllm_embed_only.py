"""A server with only an embedding model: the vLLM routes that need generation are not mounted,
and the rest (tokenize, metrics, score, docs) work from the embedding model alone."""

from __future__ import annotations

import httpx
import pytest
from conftest import ServerProcess


@pytest.fixture(scope="module")
def http(minilm_dir):
    proc = ServerProcess(str(minilm_dir), "--served-model-name", "mini")
    try:
        with httpx.Client(base_url=proc.url, timeout=60) as client:
            yield client
    finally:
        proc.stop()


def test_generation_routes_are_not_mounted(http):
    for path in ("/generate", "/v1/completions/render", "/v1/chat/completions/render"):
        assert http.post(path, json={"prompt": "x"}).status_code == 404, path
    paths = http.get("/openapi.json").json()["paths"]
    assert "/generate" not in paths and "/score" in paths and "/tokenize" in paths


def test_tokenize_uses_the_embedding_tokenizer(http):
    body = http.post("/tokenize", json={"prompt": "hello world"}).json()
    assert body["tokens"][0] == 101 and body["tokens"][-1] == 102 and body["max_model_len"] == 512
    assert (
        http.post("/detokenize", json={"tokens": body["tokens"]}).json()["prompt"]
        == "[CLS] hello world [SEP]"
    )
    chat = http.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400


def test_metrics_score_and_sleep_without_an_engine(http):
    metrics = http.get("/metrics")
    assert metrics.status_code == 200
    assert 'llmserve:num_requests_running{model_name="mini"} 0.0' in metrics.text
    score = http.post(
        "/score", json={"model": "mini", "text_1": "a cat", "text_2": ["a cat", "taxes"]}
    ).json()
    first, second = (d["score"] for d in score["data"])
    assert first == pytest.approx(1.0, abs=1e-5) and second < first
    assert http.get("/is_sleeping").status_code == 404  # sleep routes need --enable-sleep-mode
    assert http.post("/sleep").status_code == 404
    assert http.get("/health").status_code == 200
