"""Autoscaling from 1 to 2 replicas under load, the application deployed from a Serve config file
(``import_path: llmserve_ray:build_app`` with YAML ``args``) by ``serve run``."""

from __future__ import annotations

import asyncio
import sys
import time

import httpx
import openai
import pytest
import yaml
from conftest import Background, replica_ids

HEADER = "x-llmserve-replica"


@pytest.fixture(scope="module")
def autoscaled(cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scaling")
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": int(cluster.url.rsplit(":", 1)[1])},
        "applications": [
            {
                "name": "llmserve-autoscaled",
                "route_prefix": "/",
                "import_path": "llmserve_ray:build_app",
                "args": {
                    "model": "smollm2",
                    "max_model_len": 512,
                    "embedding_model": "none",
                    "health_check_period_s": 2,
                    "autoscaling": {
                        "min_replicas": 1,
                        "max_replicas": 2,
                        "target_ongoing_requests": 2,
                        "upscale_delay_s": 2,
                        "downscale_delay_s": 600,
                    },
                },
            }
        ],
    }
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_cli = [sys.executable, "-c", "from ray.serve.scripts import cli; cli()"]  # the `serve` command
    cmd = [*serve_cli, "run", str(path), "--address", cluster.address]
    proc = Background(cmd, cluster.env, folder / "serve-run.log")
    try:
        proc.wait_healthy(cluster.url)
        yield cluster.url
    finally:
        proc.stop()


@pytest.mark.slow  # nox -s slow
def test_scales_from_one_to_two_replicas_under_load(autoscaled):
    assert len(replica_ids(autoscaled)) == 1
    model = httpx.get(autoscaled + "/v1/models", timeout=10).json()["data"][0]["id"]
    seen: dict[str, float] = {}

    async def load(deadline: float):
        client = openai.AsyncOpenAI(base_url=autoscaled + "/v1", api_key="unused", max_retries=0, timeout=120)

        async def worker(i: int):
            while time.monotonic() < deadline and len(seen) < 2:
                async with client.chat.completions.with_streaming_response.create(
                    model=model, messages=[{"role": "user", "content": f"Tell a story {i}."}],
                    max_tokens=48, stream=True,
                ) as response:  # fmt: skip
                    seen.setdefault(response.headers[HEADER], time.monotonic() - started)
                    async for _ in await response.parse():
                        pass

        await asyncio.gather(*(worker(i) for i in range(12)))

    started = time.monotonic()
    asyncio.run(load(started + 180))
    print(
        f"autoscaling: replicas first answered at {sorted(round(t, 1) for t in seen.values())} s into the load"
    )
    assert len(seen) == 2
    assert len(replica_ids(autoscaled, tries=30)) == 2
