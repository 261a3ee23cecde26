"""Serving benchmark in the manner of ``vllm bench serve``, against any OpenAI-compatible URL.

Streams completions with a fixed concurrency or Poisson arrivals and reports request/s, output
tok/s and TTFT / TPOT / ITL (mean, median, p99).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class RequestResult:
    ok: bool
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    error: str = ""


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p99": 0.0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"mean": statistics.fmean(ordered), "median": statistics.median(ordered), "p99": p99}


async def _one(client: httpx.AsyncClient, url: str, body: dict, chat: bool) -> RequestResult:
    start = time.perf_counter()
    last = start
    result = RequestResult(ok=False)
    chunks = 0
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                choices = chunk.get("choices") or []
                text = (
                    (choices[0].get("delta", {}).get("content") if chat else choices[0].get("text"))
                    if choices
                    else None
                )
                if not text:
                    continue
                chunks += 1
                now = time.perf_counter()
                if result.ttft == 0.0:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last = now
        result.latency = time.perf_counter() - start
        result.output_tokens = result.output_tokens or chunks  # no usage reported: count chunks
        result.ok = True
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


async def run(
    base_url: str,
    model: str,
    prompts: list[str],
    output_len: int,
    concurrency: int,
    request_rate: float,
    chat: bool = False,
    api_key: str | None = None,
    seed: int = 0,
    ignore_eos: bool = False,
) -> dict:
    """Send every prompt; return the summary dict (also what --result-file holds)."""
    url = base_url.rstrip("/") + ("/v1/chat/completions" if chat else "/v1/completions")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    rng = random.Random(seed)
    limit = asyncio.Semaphore(concurrency if concurrency > 0 else len(prompts))

    def body(prompt: str) -> dict:
        common = {"model": model, "max_tokens": output_len, "stream": True, "temperature": 0.0,
                  "stream_options": {"include_usage": True}}  # fmt: skip
        if ignore_eos:  # a vLLM extension; OpenAI-only servers reject it
            common["ignore_eos"] = True
        if chat:
            return {**common, "messages": [{"role": "user", "content": prompt}]}
        return {**common, "prompt": prompt}

    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), headers=headers,
                                 limits=httpx.Limits(max_connections=1000)) as client:  # fmt: skip

        async def limited(prompt: str) -> RequestResult:
            async with limit:
                return await _one(client, url, body(prompt), chat)

        start = time.perf_counter()
        tasks = []
        for prompt in prompts:
            tasks.append(asyncio.create_task(limited(prompt)))
            if request_rate > 0:
                await asyncio.sleep(rng.expovariate(request_rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    return {
        "base_url": base_url,
        "model": model,
        "num_prompts": len(prompts),
        "concurrency": concurrency,
        "request_rate": request_rate,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
        "duration_s": duration,
        "request_throughput": len(ok) / duration,
        "output_throughput": tokens / duration,
        "total_output_tokens": tokens,
        "ttft_ms": {k: v * 1000 for k, v in _percentiles([r.ttft for r in ok]).items()},
        "tpot_ms": {k: v * 1000 for k, v in _percentiles(tpot).items()},
        "itl_ms": {k: v * 1000 for k, v in _percentiles([x for r in ok for x in r.itl]).items()},
    }


def format_summary(summary: dict) -> str:
    lines = [
        f"{'Successful requests:':<32}{summary['completed']} (failed {summary['failed']})",
        f"{'Benchmark duration (s):':<32}{summary['duration_s']:.2f}",
        f"{'Request throughput (req/s):':<32}{summary['request_throughput']:.2f}",
        f"{'Output token throughput (tok/s):':<32}{summary['output_throughput']:.1f}",
    ]
    for key, label in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL")):
        stats = summary[key]
        lines.append(
            f"{label + ' (ms) mean/median/p99:':<32}{stats['mean']:.1f} / {stats['median']:.1f} / {stats['p99']:.1f}"
        )
    return "\n".join(lines)


WORDS = (
    "the of and to in is was for on that with as by at from his an were are which this be or "
    "had not but first one their its new after who they have her she two been other when there "
    "all during into school time may years more most only over city some world would where later"
).split()


def random_text_prompts(num: int, length: int, seed: int = 0) -> list[str]:
    """Prompts of about ``length`` tokens (common English words are one token each)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(length)) for _ in range(num)]
