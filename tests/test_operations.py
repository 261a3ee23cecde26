"""What operators need, through real servers: /v1/status, rate and concurrency limits, request
timeouts, TLS, Unix sockets, --root-path, middleware, response defaults, logs, lenient parsing."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import ServerProcess

KEY = "sk-ops-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = {"prompt": "Count slowly:", "max_tokens": 400, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def ops(smollm2_dir):
    tests_dir = str(Path(__file__).parent)
    proc = ServerProcess(
        "--api-key", KEY, "--root-path", "/api", "--enable-prompt-tokens-details", "--enable-force-include-usage",
        "--default-max-tokens", "4", "--response-role", "bot", "--log-format", "json", "--enable-log-requests",
        "--max-log-len", "40", "--return-tokens-as-token-ids", "--middleware", "asgi_header.AddHeader",
        "--embedding-model", "none", "--max-model-len", "1024",
        env={"PYTHONPATH": tests_dir + ":" + __import__("os").environ.get("PYTHONPATH", "")},
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def http(ops):
    with httpx.Client(base_url=ops.url, headers=AUTH, timeout=120) as client:
        yield client


def _wait_idle(http, path="/metrics") -> float:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = http.get(path).text
        usage = float(re.search(r"^llmserve:kv_cache_usage_perc\{[^}]*\} (\S+)$", text, re.M).group(1))
        running = float(re.search(r"^llmserve:num_requests_running\{[^}]*\} (\S+)$", text, re.M).group(1))
        if usage == 0 and running == 0:
            return 0.0
        time.sleep(0.1)
    return usage


def test_status_shows_a_running_request_with_rising_tokens(http):
    assert http.get("/v1/status", headers={"Authorization": ""}).status_code == 401
    with http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as response:
        lines = response.iter_lines()
        seen = []
        for line in lines:
            if line.startswith("data: ") and '"text"' in line:
                body = http.get("/v1/status").json()
                requests = body["requests"]
                if requests and requests[0]["phase"] == "generation":
                    seen.append(requests[0]["generated_tokens"])
                if len(seen) >= 3:
                    break
    assert len(seen) == 3 and seen[0] < seen[-1], seen
    assert body["status"] == "running" and body["model"] and body["num_running"] >= 1
    entry = requests[0]
    assert entry["max_tokens"] == 400 and 0 < entry["progress"] < 1 and entry["ttft_s"] > 0
    assert entry["cache_hit_type"] in ("exact", "prefix", "miss") and entry["tokens_per_second"] > 0
    assert body["memory"]["process_rss_bytes"] > 10**7 and body["memory"]["kv_cache_total_bytes"] > 0
    assert {"entries", "hit_rate", "memory_bytes"} <= set(body["cache"]) and len(body["models"]) == 1
    assert _wait_idle(http) == 0
    done = http.get("/v1/status").json()
    assert done["requests"] == [] and done["total_requests_processed"] >= 1 and done["steps_executed"] > 0


def test_request_timeout_is_504_and_frees_blocks(http):
    slow = http.post("/v1/completions", json={**LONG, "max_tokens": 900, "timeout": 1.0})
    assert slow.status_code == 504 and slow.json()["error"]["code"] == 504
    events = http.post("/v1/completions", json={**LONG, "max_tokens": 900, "timeout": 1.0, "stream": True})
    error = [json.loads(e[6:]) for e in events.text.split("\n\n") if e.startswith("data: {")][-1]
    assert error["error"]["code"] == 504
    assert _wait_idle(http) == 0


def test_root_path_paths_and_auth_spelling(ops, http):
    for path in ("/v1/models", "/api/v1/models", "//v1/models", "/v1/models/", "/api/v1/models/"):
        assert httpx.get(ops.url + path, headers=AUTH).status_code == 200, path
    for scheme in ("bearer", "BEARER", "Bearer"):
        assert (
            httpx.get(ops.url + "/v1/models", headers={"Authorization": f"{scheme} {KEY}"}).status_code == 200
        )
    assert http.get("/v1/models").headers["x-test-middleware"] == "yes"


def test_defaults_usage_details_role_and_lenient_fields(ops):
    client = openai.OpenAI(base_url=ops.url + "/api/v1", api_key=KEY, max_retries=0)
    model = client.models.list().data[0].id
    plain = client.completions.create(model=model, prompt="Hello", stream_options={"include_usage": True},
                                      extra_body={"user": {"id": 7}, "cache_control": {"type": "x"}})  # fmt: skip
    assert plain.usage.completion_tokens == 4  # --default-max-tokens
    assert plain.usage.prompt_tokens_details.cached_tokens >= 0
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}])
    assert chat.choices[0].message.role == "bot"
    stream = client.completions.create(model=model, prompt="Hello", stream=True, max_tokens=3)
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3  # forced usage
    lp = client.completions.create(model=model, prompt="Hi", max_tokens=2, logprobs=1)
    assert all(t.startswith("token_id:") for t in lp.choices[0].logprobs.tokens)


def test_stream_interval_batches_tokens(http):
    body = {"prompt": "One two three", "max_tokens": 8, "ignore_eos": True, "stream": True,
            "stream_interval": 4, "return_token_ids": True}  # fmt: skip
    text = http.post("/v1/completions", json=body).text
    sizes = [len(json.loads(e[6:])["choices"][0]["token_ids"]) for e in text.split("\n\n")
             if e.startswith("data: {") and json.loads(e[6:])["choices"]]  # fmt: skip
    assert sum(sizes) == 8 and sizes[1:] == [4] * (len(sizes) - 1) or sizes == [1, 4, 3], sizes


def test_logs_are_json_truncated_and_never_print_the_key(ops, http):
    http.post("/v1/completions", json={"prompt": "x" * 500, "max_tokens": 1})
    time.sleep(0.5)
    lines = [line for line in ops.output().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    logged = [r["message"] for r in records if r["message"].startswith("request POST /v1/completions")]
    assert logged and all(len(m.split(": ", 1)[1]) <= 40 for m in logged)
    assert any(r["logger"] == "llmserve.access" for r in records)
    assert KEY not in ops.output()
    assert http.get("/load").json() == {"server_load": 0}  # no --enable-server-load-tracking


def test_rate_and_concurrency_limits(smollm2_dir):
    proc = ServerProcess(
        "--rate-limit", "3", "--max-concurrent-requests", "1", "--embedding-model", "none",
        "--max-model-len", "512", "--disable-access-log",
    )  # fmt: skip
    hi = {"prompt": "hi", "max_tokens": 1}

    async def run():
        async with httpx.AsyncClient(base_url=proc.url, timeout=60) as http:
            async with http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as held:
                lines = held.aiter_lines()  # kept: a dropped line iterator closes the response
                await lines.__anext__()
                busy = await http.post("/v1/completions", json=hi)  # while the stream is open
                await lines.aclose()
            await asyncio.sleep(0.5)  # the held stream's slot is released once its body ends
            ok = [await http.post("/v1/completions", json=hi) for _ in range(2)]
            over = await http.post("/v1/completions", json=hi)
            health = await http.get("/health")
        return busy, ok, over, health

    try:
        busy, ok, over, health = asyncio.run(run())
    finally:
        proc.stop()
    assert busy.status_code == 429 and "concurrent" in busy.json()["error"]["message"]
    assert [r.status_code for r in ok] == [200, 200]  # 3 admitted in this minute
    assert over.status_code == 429 and over.json()["error"]["type"] == "RateLimitError"
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    assert health.status_code == 200  # probes are not limited
    assert "llmserve.access" not in proc.output()


def test_tls_with_a_self_signed_certificate(smollm2_dir, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    proc = ServerProcess("--ssl-keyfile", str(key), "--ssl-certfile", str(cert), "--embedding-model", "none",
                         "--max-model-len", "512", scheme="https")  # fmt: skip
    try:
        with httpx.Client(base_url=proc.url, verify=str(cert)) as http:
            out = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
            assert out.status_code == 200 and out.json()["usage"]["completion_tokens"] == 2
        with pytest.raises(httpx.HTTPError):
            httpx.get(proc.url.replace("https", "http") + "/health", timeout=5)
    finally:
        proc.stop()


def test_unix_domain_socket(smollm2_dir, tmp_path):
    sock = str(tmp_path / "llmserve.sock")
    proc = ServerProcess("--embedding-model", "none", "--max-model-len", "512", uds=sock)
    try:
        with proc.http(timeout=60) as http:
            out = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
            assert out.status_code == 200 and out.json()["choices"][0]["text"] is not None
    finally:
        proc.stop()
