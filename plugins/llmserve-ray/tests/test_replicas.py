"""Two SmolLM2 replicas, one per node, behind Ray's HTTP proxy, started by ``llmserve ray serve``:
every protocol streams through the proxy, 32 streams spread over both replicas (seen in each
replica's metrics at its node's Ray export), stored responses are read by the other replica,
and a replica killed under load is replaced while the other keeps answering."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter

import anthropic
import httpx
import openai
import pytest
from conftest import Background, ray_metrics, replica_ids

HEADER = "x-llmserve-replica"


@pytest.fixture(scope="module")
def app(cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("replicas")
    port = cluster.url.rsplit(":", 1)[1]
    store = f"sqlite:///{folder / 'responses.sqlite'}?journal_mode=delete"
    cmd = [sys.executable, "-m", "llmserve", "ray", "serve", "smollm2", "--max-model-len", "512",
           "--embedding-model", "none", "--num-replicas", "2", "--address", cluster.address,
           "--port", port, "--proxy-location", "HeadOnly", "--health-check-period-s", "2",
           "--metrics-interval-s", "1", "--responses-store", store, "--enable-prompt-tokens-details"]  # fmt: skip
    started = time.monotonic()
    proc = Background(cmd, cluster.env, folder / "serve.log")
    try:
        proc.wait_healthy(cluster.url)
        while len(replica_ids(cluster.url)) < 2:
            assert time.monotonic() - started < 300, proc.output()
            time.sleep(1)
        print(f"two replicas ready in {time.monotonic() - started:.1f}s")
        yield cluster.url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def model(app) -> str:
    return httpx.get(app + "/v1/models", timeout=10).json()["data"][0]["id"]


def _identities(url: str) -> dict[str, dict]:
    seen: dict[str, dict] = {}
    for _ in range(30):
        body = httpx.get(url + "/ray/replica", timeout=10).json()
        seen[body["replica_id"]] = body
    return seen


def test_one_replica_on_each_node(app):
    seen = _identities(app)
    assert len(seen) == 2
    assert len({body["node_id"] for body in seen.values()}) == 2
    rss = {}
    for _ in range(20):
        raw = httpx.get(app + "/v1/status", timeout=10)
        rss[raw.headers[HEADER]] = raw.json()["memory"]["process_rss_bytes"] / 2**30
    print("replica RSS GiB:", {k: round(v, 2) for k, v in rss.items()})


def test_every_protocol_streams_through_the_proxy(app):
    oa = openai.OpenAI(base_url=app + "/v1", api_key="unused", max_retries=0, timeout=60)
    model = oa.models.list().data[0].id
    chunks = list(oa.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=8, stream=True, temperature=0))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    completion = oa.completions.create(model=model, prompt="The capital of France is", max_tokens=4)
    assert completion.usage.completion_tokens == 4
    # vLLM's own routes
    tokens = httpx.post(app + "/tokenize", json={"model": model, "prompt": "Hello world"}, timeout=30).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    # Anthropic's messages, streamed
    client = anthropic.Anthropic(base_url=app, api_key="unused", max_retries=0, timeout=60)
    with client.messages.stream(
        model=model, max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.output_tokens > 0
    # Responses, streamed
    events = list(oa.responses.create(model=model, input="Say hi", max_output_tokens=8, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"  # 8 tokens
    assert any(e.type == "response.output_text.delta" and e.delta for e in events)
    # a 4xx in the protocol's own shape, through the proxy
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(
            model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "x"}]
        )


def test_stored_responses_are_read_by_the_other_replica(app, model):
    oa = openai.OpenAI(base_url=app + "/v1", api_key="unused", max_retries=0, timeout=60)
    made: dict[str, str] = {}  # replica -> a response it stored
    for _ in range(20):
        raw = oa.responses.with_raw_response.create(model=model, input="Name a colour.", max_output_tokens=6)
        made.setdefault(raw.headers[HEADER], raw.parse().id)
        if len(made) == 2:
            break
    assert len(made) == 2
    crossed = set()
    for _ in range(30):
        for writer, response_id in made.items():
            raw = oa.responses.with_raw_response.retrieve(response_id)
            assert raw.parse().id == response_id
            if raw.headers[HEADER] != writer:
                crossed.add(writer)
    assert crossed == set(made)  # each replica read what the other one stored
    # and continues it: previous_response_id resolved from the shared store
    follow = oa.responses.create(model=model, input="Another?", previous_response_id=made[min(made)],
                                 max_output_tokens=6)  # fmt: skip
    assert follow.status in ("completed", "incomplete") and follow.previous_response_id == made[min(made)]


async def _stream(
    client: openai.AsyncOpenAI, model: str, i: int, max_tokens: int = 16
) -> tuple[str, int, float]:
    started = time.monotonic()
    async with client.chat.completions.with_streaming_response.create(
        model=model, messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=max_tokens,
        stream=True, temperature=0, stream_options={"include_usage": True},
    ) as response:  # fmt: skip
        replica = response.headers[HEADER]
        tokens = 0
        async for chunk in await response.parse():
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
    return replica, tokens, time.monotonic() - started


def test_32_streams_spread_over_both_replicas(app, model, cluster):
    name = "ray_llmserve_request_success_total"
    before = ray_metrics(cluster.metrics_ports, name)
    for _ in range(10):  # until the export has caught up with the earlier tests' requests
        time.sleep(3)
        before, previous = ray_metrics(cluster.metrics_ports, name), before
        if before == previous and len(before) == 2:
            break

    async def run():
        client = openai.AsyncOpenAI(base_url=app + "/v1", api_key="unused", max_retries=0, timeout=120)
        return await asyncio.gather(*(_stream(client, model, i) for i in range(32)))

    started = time.monotonic()
    results = asyncio.run(run())
    wall = time.monotonic() - started
    per_replica = Counter(replica for replica, _, _ in results)
    tokens = sum(t for _, t, _ in results)
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        "?",
    )
    print(f"CPU {cpu}, {os.cpu_count()} cores")
    print(f"32 streams: {wall:.1f}s, {tokens / wall:.1f} output tok/s, per replica {dict(per_replica)}")
    assert len(per_replica) == 2 and min(per_replica.values()) >= 4
    assert all(t > 0 for _, t, _ in results)
    # each replica's own metrics, scraped from its node's Ray export, count its share
    deadline = time.monotonic() + 60
    while True:
        after = ray_metrics(cluster.metrics_ports, name)
        grown = {r: after.get(r, 0) - before.get(r, 0) for r in per_replica}
        if all(grown[r] == per_replica[r] for r in per_replica) or time.monotonic() > deadline:
            break
        time.sleep(2)
    print(f"ray_llmserve_request_success_total grew by {grown}")
    assert grown == dict(per_replica)


def test_equal_prefix_keys_go_to_one_replica(app, model):
    oa = openai.OpenAI(base_url=app + "/v1", api_key="unused", max_retries=0, timeout=60)
    system = "You are a terse assistant for a tea shop. " * 12  # a shared prefix of several KV blocks

    def ask(key: str, question: str):
        raw = oa.chat.completions.with_raw_response.create(
            model=model, max_tokens=2, extra_headers={"X-Prefix-Key": key},
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        )  # fmt: skip
        return raw.headers[HEADER], raw.parse()

    homes = {}
    for key in (f"conversation-{i}" for i in range(16)):
        answered = [ask(key, f"Question {n}?") for n in range(3)]
        assert len({replica for replica, _ in answered}) == 1, key  # one replica per key
        homes[key] = answered[0][0]
        cached = answered[-1][1].usage.prompt_tokens_details
        assert cached is not None and cached.cached_tokens >= 64  # its prefix cache held the system prompt
    assert len(set(homes.values())) == 2  # and the keys spread over both replicas


@pytest.mark.slow  # nox -s slow
def test_a_killed_replica_is_replaced_while_the_other_answers(app, model):
    seen = _identities(app)
    victim_id, victim = sorted(seen.items())[0]
    survivor = next(r for r in seen if r != victim_id)
    log: list[tuple[float, str | None, bool]] = []  # (started, replica, succeeded)

    async def load(stop_at: float):
        client = openai.AsyncOpenAI(base_url=app + "/v1", api_key="unused", max_retries=0, timeout=60)

        async def one_worker(i: int):
            while time.monotonic() < stop_at:
                started = time.monotonic()
                try:
                    replica, tokens, _ = await _stream(client, model, i, max_tokens=24)
                    log.append((started, replica, tokens > 0))
                except (openai.APIError, httpx.HTTPError):
                    log.append((started, None, False))
                    await asyncio.sleep(0.2)

        async def killer():
            await asyncio.sleep(4)
            os.kill(victim["pid"], signal.SIGKILL)
            return time.monotonic()

        killed_at, *_ = await asyncio.gather(killer(), *(one_worker(i) for i in range(8)))
        return killed_at

    killed_at = asyncio.run(load(time.monotonic() + 20))
    after = [entry for entry in log if entry[0] > killed_at + 1]
    ok_after = [entry for entry in after if entry[2]]
    failed = [entry for entry in log if not entry[2]]
    print(
        f"kill test: {len(log)} streams, {len(failed)} failed, {len(ok_after)}/{len(after)} ok after the kill"
    )
    assert any(replica == survivor for _, replica, _ in ok_after)  # the other one kept answering
    assert len(ok_after) >= 0.9 * len(after)
    # Ray starts a new replica in place of the killed one
    deadline = time.monotonic() + 180
    while True:
        now = replica_ids(app)
        if len(now) == 2 and victim_id not in now or time.monotonic() > deadline:
            break
        time.sleep(2)
    replaced_in = time.monotonic() - killed_at
    print(f"replica replaced {replaced_in:.1f}s after the kill")
    assert len(now) == 2 and victim_id not in now and survivor in now
