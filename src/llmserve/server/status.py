"""GET /v1/status: what the server is doing now, per served model and per request in flight.

The first served model's fields stand at the top level (vllm-mlx's shape); ``models`` lists every
served model in the same shape. Behind the API key like every non-probe route.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any

from pydantic import BaseModel
from quart import Blueprint, current_app

from llmserve.server.openapi import document

bp = Blueprint("llmserve_status", __name__)


class StatusResponse(BaseModel):
    """The status of the first served model, plus every model's in ``models``."""

    status: str
    model: str
    uptime_s: float
    models: list[dict[str, Any]]
    model_config = {"extra": "allow"}


def rss_bytes() -> int:
    """This process's resident memory."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def model_status(model, now: float) -> dict[str, Any]:
    engine = model.engine
    if engine is None:
        base = {"status": "running", "model": model.name, "kind": model.kind}
        if model.transcriber is not None:  # windows running / waiting and its KV pool
            base.update(model.transcriber.stats())
        return base
    stats = engine.stats()
    phases = {} if engine.is_dead else await engine.request_phases()
    block_bytes = engine.model_info.kv_bytes_per_token() * engine.config.block_size
    used = stats.num_total_blocks - stats.num_free_blocks
    queries = stats.prefix_cache_queries
    return {
        "status": "stopped" if engine.is_dead else "sleeping" if engine.is_sleeping else "running",
        "model": model.name,
        "kind": model.kind,
        "uptime_s": round(time.time() - engine.started, 3),
        "steps_executed": stats.num_steps,
        "num_running": stats.num_running,
        "num_waiting": stats.num_waiting,
        "total_requests_processed": engine.totals.requests,
        "total_prompt_tokens": engine.totals.prompt_tokens,
        "total_completion_tokens": engine.totals.completion_tokens,
        "memory": {
            "kv_cache_used_bytes": used * block_bytes,
            "kv_cache_total_bytes": stats.num_total_blocks * block_bytes,
            "kv_cache_usage": stats.kv_cache_usage,
        },
        "cache": {
            "entries": stats.num_cached_blocks,
            "hit_rate": stats.prefix_cache_hits / queries if queries else 0.0,
            "memory_bytes": stats.num_cached_blocks * block_bytes,
        },
        "requests": [_request(stream, phases, now) for stream in engine.streams],
    }


def _request(stream, phases: dict[str, tuple[str, int]], now: float) -> dict[str, Any]:
    generated = stream.num_generated_tokens
    phase = phases.get(stream.request_id, ("generation" if generated else "queued", 0))[0]
    first = stream.first_token_time
    prompt_len = len(stream.prompt_token_ids)
    cached = stream.num_cached_tokens
    max_tokens = (stream.params.max_tokens or 0) * stream.params.n
    rate = generated / (now - first) if first is not None and now > first else 0.0
    return {
        "request_id": stream.request_id,
        "phase": phase,
        "elapsed_s": round(now - stream.arrival, 3),
        "ttft_s": round(first - stream.arrival, 3) if first is not None else None,
        "tokens_per_second": round(rate, 2),
        "prompt_tokens": prompt_len,
        "generated_tokens": generated,
        "max_tokens": max_tokens,
        "progress": round(generated / max_tokens, 4) if max_tokens else 0.0,
        "cached_tokens": cached,
        "cache_hit_type": "exact" if cached >= prompt_len - 1 and cached else "prefix" if cached else "miss",
    }


@bp.get("/v1/status")
@document("What the server is doing: per model, its engine, memory, prefix cache and requests in flight.",
          response=StatusResponse, tags=["llmserve"])  # fmt: skip
async def status():
    context = current_app.extensions["llmserve"]
    now = time.monotonic()
    entries = [await model_status(model, now) for model in context.models]
    first = entries[0] if entries else {"status": "running", "model": ""}
    memory = {"process_rss_bytes": rss_bytes()}
    body = {
        **first,
        "uptime_s": round(time.time() - context.created, 3),
        "memory": {**memory, **first.get("memory", {})},
    }
    body["models"] = entries
    return body
