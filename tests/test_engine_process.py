"""The engine core in its own process (--engine-process): another pid, aborts free KV there, the
typed messages round-trip, a lost engine process makes the server unhealthy and exit, and an
engine that cannot load is a clear error at start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from conftest import ServerProcess

from llmserve.backends.base import TokenLogprob
from llmserve.engine import core_messages as m
from llmserve.engine.engine import EngineStats, SeqEvent
from llmserve.engine.sampling import SamplingParams
from llmserve.errors import InvalidRequestError, OverloadedError
from llmserve.structured.reasoning import AfterMarker
from llmserve.structured.remote import RemoteSpec, constraint_to_wire
from llmserve.structured.request import StructuredOutputs


def _engine_pids(server_pid: int) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(server_pid), "-f", "core_process"], capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split()]


@pytest.fixture(scope="module")
def served(smollm2_dir):
    proc = ServerProcess(
        str(smollm2_dir), "--embedding-model", "none", "--max-model-len", "1024", "--engine-process",
        "--enable-sleep-mode",
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.stop()


def _status(http: httpx.Client) -> dict:
    return http.get("/v1/status").json()


def test_the_engine_runs_in_another_process(served):
    pids = _engine_pids(served.proc.pid)
    assert len(pids) == 1 and pids[0] != served.proc.pid, pids
    assert f"engine process pid {pids[0]}" in served.output()
    with served.http(timeout=120) as http:
        body = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        out = http.post("/v1/completions", json=body).json()
        assert out["choices"][0]["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 8
        assert _status(http)["steps_executed"] >= 8  # the numbers come from the engine process


def test_an_aborted_stream_frees_its_kv_blocks_in_the_engine_process(served):
    body = {
        "prompt": "Count slowly:",
        "max_tokens": 900,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    with served.http(timeout=120) as http:
        with http.stream("POST", "/v1/completions", json=body) as response:
            chunks = 0
            for line in response.iter_lines():
                chunks += line.startswith("data: ")
                if chunks >= 5:
                    break  # disconnect mid-stream
        deadline = time.monotonic() + 10  # 900 tokens take far longer on these CPUs
        while (status := _status(http))["memory"]["kv_cache_used_bytes"] or status["num_running"]:
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
    assert status["total_requests_processed"] >= 1 and status["total_completion_tokens"] < 900


def test_sleep_and_status_go_through_the_engine_process(served):
    with served.http(timeout=60) as http:
        try:
            assert http.post("/sleep?level=1").status_code == 200
            assert http.get("/is_sleeping").json() == {"is_sleeping": True}
            refused = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
            assert refused.status_code == 503
        finally:
            assert http.post("/wake_up").status_code == 200
        assert http.get("/is_sleeping").json() == {"is_sleeping": False}
        ok = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "temperature": 0})
        assert ok.status_code == 200, ok.text


def test_a_killed_engine_process_makes_the_server_unhealthy_and_exit(smollm2_dir):
    proc = ServerProcess(
        str(smollm2_dir), "--embedding-model", "none", "--max-model-len", "512", "--engine-process"
    )
    try:
        (engine_pid,) = _engine_pids(proc.proc.pid)
        lines: list[str] = []
        started = threading.Event()

        def stream() -> None:
            body = {"prompt": "Once", "max_tokens": 400, "temperature": 0, "ignore_eos": True, "stream": True}
            try:
                with httpx.stream("POST", proc.url + "/v1/completions", json=body, timeout=60) as response:
                    for line in response.iter_lines():
                        lines.append(line)
                        started.set()
            except httpx.HTTPError as exc:
                lines.append(f"cut: {type(exc).__name__}")
            started.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(60)
        os.kill(engine_pid, signal.SIGKILL)
        statuses = []
        deadline = time.monotonic() + 60
        while proc.proc.poll() is None and time.monotonic() < deadline:
            try:
                statuses.append(httpx.get(proc.url + "/health", timeout=2).status_code)
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        reader.join(30)
        assert not reader.is_alive(), "the stream hung"
        assert 503 in statuses, statuses[-5:]
        assert proc.proc.wait(30) not in (0, None)
        assert lines[-1] != "data: [DONE]" or any("error" in line for line in lines), lines[-3:]
        assert f"engine process (pid {engine_pid}) exited with code -9" in proc.output()
    finally:
        proc.stop(signal.SIGKILL)


def test_an_engine_that_cannot_load_fails_the_start_clearly(smollm2_dir):
    env = {**os.environ, "LLMSERVE_KV_CACHE_SPACE": "1"}
    cmd = [sys.executable, "-m", "llmserve", "serve", str(smollm2_dir), "--embedding-model", "none",
           "--max-model-len", "999999", "--engine-process", "--port", "0"]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert "--max-model-len 999999 exceeds the model's context length" in out, out[-2000:]
    assert "Traceback" not in out, out[-3000:]


def test_messages_round_trip():
    params = SamplingParams(
        n=2, temperature=0.5, stop=["x"], logit_bias={5: -1.5}, seed=3, max_tokens=7, extra_args={"a": [1]}
    )
    add = m.AddRequest("r1", [1, 2, 3], m.params_to_wire(params), None, 2)
    back = m.to_engine.decode(m.encode(add))
    assert back == add and m.params_from_wire(back.params) == params
    lp = (TokenLogprob(5, -0.25, 1), [TokenLogprob(6, -2.0, 2)])
    event = SeqEvent("r1", 1, 5, lp, "stop", 5, 3, 0, [lp], 12.5, None)
    stats = EngineStats(1, 2, 3, 4, 0.5, 6, 7, 8, 9)
    out = m.from_engine.decode(m.encode(m.StepOutputs([event], stats)))
    assert out.events == [event] and out.stats == stats
    assert out.events[0].logprobs[1][0] == TokenLogprob(6, -2.0, 2)


def test_errors_and_constraints_travel_as_data():
    err = m.error_from_wire(m.error_to_wire(InvalidRequestError("bad regex", param="regex")))
    assert isinstance(err, InvalidRequestError) and err.param == "regex" and err.status == 400
    assert isinstance(m.error_from_wire(m.error_to_wire(OverloadedError("busy"))), OverloadedError)
    other = m.error_from_wire(m.error_to_wire(RuntimeError("boom")))
    assert other.status == 500 and "boom" in str(other)
    spec = RemoteSpec(StructuredOutputs(choice=("yes", "no")), timeout=5)
    wire = constraint_to_wire(AfterMarker(spec, [7, 8], budget=4))
    assert wire == {
        "kind": "after",
        "inner": {"kind": "structured", "spec": {**_defaults(), "choice": ("yes", "no")}},
        "marker": [7, 8],
        "budget": 4,
    }
    assert m.to_engine.decode(m.encode(m.AddRequest("r", [1], {}, wire))).constraint["inner"]["spec"][
        "choice"
    ] == [
        "yes",
        "no",
    ]


def _defaults() -> dict:
    from dataclasses import fields

    return {f.name: f.default for f in fields(StructuredOutputs)}
