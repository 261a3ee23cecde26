"""A job whose stream stops early (RunPod cancelled it, or a client went away) aborts its engine
request and frees its KV blocks, through the same path as a dropped HTTP client."""

from __future__ import annotations

import asyncio

import pytest
from llmserve_runpod.env import WorkerSettings, config_from_env
from llmserve_runpod.handler import Worker

from llmserve.api import load_app

LONG = {"max_tokens": 400, "ignore_eos": True}


@pytest.fixture(scope="module")
def worker():
    env = {"MODEL_NAME": "smollm2", "MAX_MODEL_LEN": "512", "EMBEDDING_MODEL": "none",
           "KV_CACHE_SPACE": "1", "ENABLE_PREFIX_CACHING": "false", "RESPONSES_STORE": "memory"}  # fmt: skip
    return Worker(load_app(config_from_env(env)), WorkerSettings(min_batch_size=1))


async def _status(worker: Worker) -> dict:
    [status] = [out async for out in worker.handler({"id": "s", "input": {"openai_route": "/v1/status"}})]
    return status


async def _idle(worker: Worker) -> dict:
    for _ in range(100):
        status = await _status(worker)
        if not status["requests"] and status["memory"]["kv_cache_used_bytes"] == 0:
            return status  # the engine applied the abort
        await asyncio.sleep(0.1)
    return status


def test_stopped_streams_free_their_requests(worker):
    jobs = [
        {"prompt": "Once upon a time", "sampling_params": LONG, "stream": True},
        {"openai_route": "/v1/chat/completions",
         "openai_input": {"messages": [{"role": "user", "content": "Tell a story."}], "stream": True, **LONG}},
    ]  # fmt: skip

    async def scenario() -> None:
        try:
            for job in jobs:
                outputs = worker.handler({"id": "j", "input": job})
                first = await outputs.__anext__()
                assert "error" not in first
                busy = await _status(worker)
                assert len(busy["requests"]) == 1
                await outputs.aclose()
                idle = await _idle(worker)
                assert idle["requests"] == [] and idle["memory"]["kv_cache_used_bytes"] == 0
                assert idle["total_completion_tokens"] < 400 * len(jobs)
        finally:
            await worker.app.shutdown()

    asyncio.run(scenario())
