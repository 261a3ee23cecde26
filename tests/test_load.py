"""Load and abort storms on loopback, each a bounded loop that ends by itself: many concurrent
streams all complete; streams dropped at random points free everything; a soak of mixed
chat / completions / embeddings keeps RSS flat and latency steady.

LLMSERVE_SOAK_S sets the soak's length (15 s in the suite; `nox -s soak` runs 600 s).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time

import httpx
import pytest

SOAK_S = float(os.environ.get("LLMSERVE_SOAK_S", "15"))
PROMPTS = ["Once upon a time", "The capital of France is", "def fib(n):", "Tell me a joke.", "1, 2, 3,"]


async def status(http: httpx.AsyncClient) -> dict:
    return (await http.get("/v1/status")).json()


async def wait_idle(http: httpx.AsyncClient, timeout: float = 60) -> dict:
    """Nothing in flight and every KV block free (prefix-cached blocks count as free)."""
    deadline = time.monotonic() + timeout
    while True:
        now = await status(http)
        if now["num_running"] == now["num_waiting"] == 0 and now["memory"]["kv_cache_used_bytes"] == 0:
            return now
        assert time.monotonic() < deadline, now
        await asyncio.sleep(0.3)


def running_metric(metrics: str) -> float:
    line = next(line for line in metrics.splitlines() if line.startswith("llmserve:num_requests_running{"))
    return float(line.rsplit(" ", 1)[1])


async def stream_completion(http: httpx.AsyncClient, i: int, max_tokens: int) -> tuple[int, str | None]:
    body = {"prompt": PROMPTS[i % len(PROMPTS)] + f" #{i}", "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}  # fmt: skip
    chunks, finish = 0, None
    async with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                chunks += 1
                if '"finish_reason":"length"' in line.replace(" ", ""):
                    finish = "length"
    return chunks, finish


@pytest.mark.slow  # nox -s slow
async def test_256_concurrent_streams_all_complete(server):
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    async with httpx.AsyncClient(base_url=server, timeout=600, limits=limits) as http:
        await wait_idle(http)
        started = time.monotonic()
        results = await asyncio.gather(*(stream_completion(http, i, 8) for i in range(256)))
        took = time.monotonic() - started
        assert all(finish == "length" and chunks >= 8 for chunks, finish in results), results[:5]
        await wait_idle(http)
        print(f"256 streams x 8 tokens in {took:.1f} s")


@pytest.mark.slow  # nox -s slow
async def test_1000_streams_dropped_at_random_points_free_everything(server):
    rng = random.Random(16)
    limits = httpx.Limits(max_connections=80, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server, timeout=120, limits=limits) as http:
        initial = await wait_idle(http)
        total_blocks = initial["memory"]["kv_cache_total_bytes"]
        counts = {"before_first_token": 0, "mid_stream": 0, "prefill": 0}

        async def drop(i: int) -> None:
            where = rng.choice(list(counts))
            counts[where] += 1
            # a long prompt, so some drops land while it is prefilled
            prompt = PROMPTS[i % len(PROMPTS)] * (20 if where == "prefill" else 1) + f" {i}"
            body = {
                "prompt": prompt,
                "max_tokens": 64,
                "temperature": 0.8,
                "ignore_eos": True,
                "stream": True,
            }
            try:
                async with http.stream("POST", "/v1/completions", json=body) as response:
                    if where != "mid_stream":
                        return  # headers only: before its first token (or still in prefill)
                    seen, stop_after = 0, rng.randint(1, 6)
                    async for line in response.aiter_lines():
                        if line.startswith("data: {"):
                            seen += 1
                            if seen >= stop_after:
                                return
            except httpx.HTTPError:
                pass

        sem = asyncio.Semaphore(64)

        async def bounded(i: int) -> None:
            async with sem:
                await drop(i)

        await asyncio.gather(*(bounded(i) for i in range(1000)))
        after = await wait_idle(http)
        assert after["memory"]["kv_cache_total_bytes"] == total_blocks
        assert running_metric((await http.get("/metrics")).text) == 0
        print(f"1000 streams dropped: {counts}")


async def test_soak_keeps_rss_flat_and_latency_steady(server):
    """Mixed requests at a steady, sustainable rate (a few clients in closed loops)."""
    async with httpx.AsyncClient(base_url=server, timeout=120) as http:
        await wait_idle(http)
        rss: list[tuple[float, int]] = []
        latencies: list[tuple[float, str, float]] = []
        errors: list[str] = []
        start = time.monotonic()
        end = start + SOAK_S

        async def client(k: int) -> None:
            rng = random.Random(k)
            while time.monotonic() < end:
                kind = rng.choice(["chat", "completion", "embedding"])
                t0 = time.monotonic()
                if kind == "chat":
                    body = {"messages": [{"role": "user", "content": rng.choice(PROMPTS)}], "max_tokens": 8,
                            "temperature": 0.7, "stream": rng.random() < 0.5}  # fmt: skip
                    response = await http.post("/v1/chat/completions", json=body)
                elif kind == "completion":
                    body = {
                        "prompt": rng.choice(PROMPTS),
                        "max_tokens": 8,
                        "temperature": 0.7,
                        "ignore_eos": True,
                    }
                    response = await http.post("/v1/completions", json=body)
                else:
                    response = await http.post("/v1/embeddings", json={"input": [rng.choice(PROMPTS)] * 4})
                if response.status_code != 200:
                    errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
                latencies.append((t0 - start, kind, time.monotonic() - t0))

        async def sample() -> None:
            while time.monotonic() < end:
                rss.append((time.monotonic() - start, (await status(http))["memory"]["process_rss_bytes"]))
                await asyncio.sleep(max(SOAK_S / 60, 1.0))

        await asyncio.gather(sample(), *(client(k) for k in range(4)))
        assert not errors, errors[:5]
        await wait_idle(http)
        half = [value for t, value in rss if t >= SOAK_S / 2]
        growth = (half[-1] - half[0]) / half[0]
        first, second = _halves(latencies, SOAK_S)
        print(f"soak {SOAK_S:.0f} s: {len(latencies)} requests, RSS {rss[0][1] / 2**20:.0f} (start) -> "
              f"{half[0] / 2**20:.0f} (middle) -> {rss[-1][1] / 2**20:.0f} MiB (end; last half {growth:+.1%}), "
              f"{len(rss)} samples, median latency "
              f"{first * 1000:.0f} ms first half, {second * 1000:.0f} ms second half")  # fmt: skip
        assert growth < 0.05, rss
        assert second < first * 1.5 + 0.05, (first, second)


def _halves(latencies: list[tuple[float, str, float]], length: float) -> tuple[float, float]:
    first = [d for t, _, d in latencies if t < length / 2]
    second = [d for t, _, d in latencies if t >= length / 2]
    return statistics.median(first), statistics.median(second)


pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
