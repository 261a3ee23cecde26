"""Serving load generator in the manner of ``vllm bench serve``, against any OpenAI-compatible URL.

Streams chat (or completion) requests at a fixed concurrency or with Poisson arrivals and reports
request/s, output tok/s and TTFT / TPOT / ITL (mean, median, p99). Output tokens are counted from the
``usage`` the server reports in its last chunk; a server that reports none is counted one token per
streamed delta, and each result says which (``token_count``).
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
    prompt_tokens: int = 0
    deltas: int = 0  # streamed chunks that carried text
    from_usage: bool = False  # output_tokens came from the server's usage, not from counting deltas
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


def _delta_text(chunk: dict, chat: bool) -> str | None:
    choices = chunk.get("choices") or []
    if not choices:
        return None
    if chat:
        delta = choices[0].get("delta") or {}
        return delta.get("content") or delta.get("reasoning_content")
    return choices[0].get("text")


async def send(client: httpx.AsyncClient, url: str, body: dict, chat: bool) -> RequestResult:
    """One streaming request; times the first and every later text delta."""
    start = time.perf_counter()
    last = start
    result = RequestResult(ok=False)
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:300]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if "error" in chunk:
                    result.error = f"error event: {json.dumps(chunk['error'])[:300]}"
                    return result
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    result.output_tokens = usage["completion_tokens"]
                    result.prompt_tokens = usage.get("prompt_tokens") or 0
                    result.from_usage = True
                if not _delta_text(chunk, chat):
                    continue
                result.deltas += 1
                now = time.perf_counter()
                if result.ttft == 0.0:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last = now
        result.latency = time.perf_counter() - start
        if not result.from_usage:
            result.output_tokens = result.deltas
        result.ok = True
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def request_body(model: str, prompt: str, output_len: int, chat: bool, extra: dict | None = None) -> dict:
    """A greedy streaming request for ``output_len`` tokens, with a server's own extra fields."""
    body = {"model": model, "max_tokens": output_len, "stream": True, "temperature": 0.0,
            "stream_options": {"include_usage": True}, **(extra or {})}  # fmt: skip
    if chat:
        return {**body, "messages": [{"role": "user", "content": prompt}]}
    return {**body, "prompt": prompt}


def endpoint_url(base_url: str, chat: bool) -> str:
    return base_url.rstrip("/") + ("/v1/chat/completions" if chat else "/v1/completions")


async def run(
    base_url: str,
    model: str,
    prompts: list[str],
    output_len: int,
    concurrency: int,
    request_rate: float = 0.0,
    chat: bool = True,
    api_key: str | None = None,
    seed: int = 0,
    extra_body: dict | None = None,
) -> dict:
    """Send every prompt; return the summary dict (what ``--json`` holds per server and level)."""
    url = endpoint_url(base_url, chat)
    # A connection per request: llama-server closes a kept-alive connection after a few requests,
    # and a request sent on it then fails before any response (httpx does not retry it).
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    rng = random.Random(seed)
    limit = asyncio.Semaphore(concurrency if concurrency > 0 else len(prompts))
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0), headers=headers,
                                 limits=httpx.Limits(max_connections=1000, max_keepalive_connections=0)) as client:  # fmt: skip

        async def limited(prompt: str) -> RequestResult:
            async with limit:
                return await send(
                    client, url, request_body(model, prompt, output_len, chat, extra_body), chat
                )

        start = time.perf_counter()
        tasks = []
        for prompt in prompts:
            tasks.append(asyncio.create_task(limited(prompt)))
            if request_rate > 0:
                await asyncio.sleep(rng.expovariate(request_rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return summarize(results, duration, base_url=base_url, model=model, concurrency=concurrency,
                     request_rate=request_rate, output_len=output_len)  # fmt: skip


def summarize(results: list[RequestResult], duration: float, **meta) -> dict:
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    sources = {"usage" if r.from_usage else "deltas" for r in ok}
    return {
        **meta,
        "num_prompts": len(results),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
        "duration_s": duration,
        "request_throughput": len(ok) / duration,
        "output_throughput": tokens / duration,
        "total_output_tokens": tokens,
        "total_prompt_tokens": sum(r.prompt_tokens for r in ok),
        "token_count": "+".join(sorted(sources)) or "none",  # usage, deltas, or both
        "output_tokens_per_request": tokens / len(ok) if ok else 0.0,
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


def random_text_prompts(num: int, length: int | tuple[int, int], seed: int = 0) -> list[str]:
    """Prompts of about ``length`` tokens, or of a length drawn uniformly from ``(low, high)``
    (common English words are one token each in the usual BPE vocabularies)."""
    rng = random.Random(seed)
    low, high = (length, length) if isinstance(length, int) else length
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(num)]
