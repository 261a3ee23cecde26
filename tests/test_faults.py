"""Faults: an exception inside one request's engine step, SIGTERM with streams open, a killed
tensor-parallel worker, an unwritable cache directory at start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import ServerProcess

PLUGIN = Path(__file__).parent / "fixtures" / "fault_plugin.py"
CHAT = {"messages": [{"role": "user", "content": "Count to twenty."}], "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def faulty(smollm2_dir, minilm_dir):
    """A server with the fault-injection logits processor; the SIGTERM test stops it last."""
    proc = ServerProcess(
        "--max-model-len", "2048", "--tool-parser-plugin", str(PLUGIN), "--logits-processors", "fail-on-request",
        "--shutdown-timeout", "8",
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.stop()


def _idle(http: httpx.Client) -> dict:
    deadline = time.monotonic() + 30
    while True:
        status = http.get("/v1/status").json()
        if (
            status["num_running"] == status["num_waiting"] == 0
            and status["memory"]["kv_cache_used_bytes"] == 0
        ):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.3)


def test_exception_in_one_request_fails_it_and_the_others_finish(faulty):
    client = openai.OpenAI(base_url=faulty.url + "/v1", api_key="x", max_retries=0, timeout=120)
    results: dict[str, object] = {}

    def good(i: int) -> None:
        out = client.chat.completions.create(model="", max_tokens=24, **_sdk(CHAT))
        results[f"good{i}"] = out.choices[0]

    def bad() -> None:
        kwargs = _sdk(CHAT)
        kwargs["extra_body"] = {**kwargs["extra_body"], "vllm_xargs": {"fail_at": 3}}
        try:
            client.chat.completions.create(model="", max_tokens=24, **kwargs)
        except openai.APIStatusError as exc:
            results["bad"] = exc
        else:
            results["bad"] = "no error"

    def bad_stream() -> None:
        events = []
        with httpx.stream(
            "POST",
            faulty.url + "/v1/chat/completions",
            timeout=120,
            json={**CHAT, "max_tokens": 24, "stream": True, "vllm_xargs": {"fail_at": 5}},
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        results["bad_stream"] = events

    threads = [threading.Thread(target=good, args=(i,)) for i in range(3)]
    threads += [threading.Thread(target=bad), threading.Thread(target=bad_stream)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    for i in range(3):  # the others ran to their length, in the same steps as the failing ones
        choice = results[f"good{i}"]
        assert choice.finish_reason == "length", choice
    error = results["bad"]
    assert isinstance(error, openai.APIStatusError), error
    assert error.status_code == 500 and "injected fault" in error.message
    events = results["bad_stream"]
    assert events[-1] == "[DONE]" and "injected fault" in json.loads(events[-2])["error"]["message"]
    assert any(json.loads(e).get("choices") for e in events[:-2])  # tokens came before the fault
    with faulty.http(timeout=60) as http:
        assert http.get("/health").status_code == 200
        _idle(http)  # the failed requests' blocks came back
        again = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4}).json()
        assert again["choices"][0]["finish_reason"] == "length"


def _sdk(body: dict) -> dict:
    extra = {k: v for k, v in body.items() if k in ("ignore_eos",)}
    return {"messages": body["messages"], "temperature": body["temperature"], "extra_body": extra}


def test_sigterm_finishes_streams_in_flight_then_exits_0(faulty):
    """Short streams finish; one longer than --shutdown-timeout (8 s) is cut; new connections
    are refused; the exit code is 0."""
    done: dict[int, list[str]] = {}
    first = threading.Barrier(4, timeout=120)

    def stream(i: int, max_tokens: int) -> None:
        lines = []
        try:
            with httpx.stream(
                "POST",
                faulty.url + "/v1/completions",
                timeout=120,
                json={
                    "prompt": "Once upon a time",
                    "max_tokens": max_tokens,
                    "temperature": 0,
                    "ignore_eos": True,
                    "stream": True,
                },
            ) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        if not lines:
                            first.wait()
                        lines.append(line[6:])
        except httpx.HTTPError as exc:
            lines.append(f"cut: {type(exc).__name__}")
        done[i] = lines

    threads = [threading.Thread(target=stream, args=(i, 4)) for i in range(2)]
    threads.append(threading.Thread(target=stream, args=(2, 2000)))
    for t in threads:
        t.start()
    first.wait()  # every stream has its first token
    started = time.monotonic()
    faulty.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(faulty.url + "/health", timeout=2)
    code = faulty.proc.wait(60)
    took = time.monotonic() - started
    for t in threads:
        t.join(30)
    log = faulty.output()
    assert code == 0, log[-3000:]
    for i in range(2):
        assert done[i][-1] == "[DONE]", done[i][-3:]
        assert json.loads(done[i][-2])["choices"][0]["finish_reason"] == "length"
    assert done[2][-1] != "[DONE]"  # 2000 tokens do not fit in 8 s on a CPU: it was cut
    assert took < 8 + 20, took
    assert "SIGTERM: no new connections" in log and "unhandled error" not in log


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _tp_workers(pid: int) -> list[int]:
    """The tensor-parallel workers under ``pid``: its children, or with --engine-process its
    engine process's children."""
    found = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"worker_main" in cmdline:
            found.append(child)
        elif b"core_process" in cmdline:
            found += _tp_workers(child)
    return found


def test_killed_tensor_parallel_worker_makes_the_server_unhealthy_and_exit(smollm2_dir):
    proc = ServerProcess(
        str(smollm2_dir), "--embedding-model", "none", "--tensor-parallel-size", "2", "--max-model-len", "512",
        "--dtype", "float32", timeout=300,
    )  # fmt: skip
    try:
        workers = _tp_workers(proc.proc.pid)
        assert len(workers) == 1, workers
        lines: list[str] = []
        got_first = threading.Event()

        def stream() -> None:
            try:
                with httpx.stream(
                    "POST",
                    proc.url + "/v1/completions",
                    timeout=120,
                    json={
                        "prompt": "Once upon a time",
                        "max_tokens": 400,
                        "temperature": 0,
                        "ignore_eos": True,
                        "stream": True,
                    },
                ) as response:
                    for line in response.iter_lines():
                        if line.startswith("data: "):
                            lines.append(line[6:])
                            got_first.set()
            except httpx.HTTPError as exc:
                lines.append(f"cut: {type(exc).__name__}")
            got_first.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert got_first.wait(120)
        os.kill(workers[0], signal.SIGKILL)
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
        code = proc.proc.wait(30)
        assert code not in (0, None), proc.output()[-3000:]
        assert lines and lines[-1] != "[DONE]" or any("error" in line for line in lines), lines[-3:]
        # the reason in the log: the lost worker by name, or the failed step it caused (whichever
        # the engine noticed first)
        log = proc.output()
        assert "tensor-parallel worker rank 1" in log or "engine failed" in log, log[-3000:]
    finally:
        proc.stop(signal.SIGKILL)


def test_unwritable_cache_dir_is_a_clear_error_at_start():
    env = {**os.environ, "LLMSERVE_CACHE_DIR": "/dev/null/llmserve-cache"}
    run = subprocess.run([sys.executable, "-m", "llmserve", "serve", "--port", "0"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert "Traceback" not in out, out[-3000:]
    assert "/dev/null/llmserve-cache" in out and "cache" in out.lower(), out[-2000:]
