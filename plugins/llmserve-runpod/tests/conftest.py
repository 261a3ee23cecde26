from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(proc: subprocess.Popen, url: str, log, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("did not start in time")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(2)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# Small and quick: 1 GiB of KV cache, a short context, the models' stores in memory.
BASE_ENV = {"LLMSERVE_KV_CACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def worker():
    """The worker under the RunPod SDK's local API server (``--rp_serve_api``)."""
    port = free_port()
    env = {
        **os.environ,
        **BASE_ENV,
        "MODEL_NAME": "smollm2",
        "MAX_MODEL_LEN": "512",
        "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "smol",
        "RESPONSES_STORE": "memory",
        "ENABLE_PREFIX_CACHING": "true",
        "MIN_BATCH_SIZE": "1",
        "BATCH_SIZE_GROWTH_FACTOR": "3",
    }
    cmd = [sys.executable, "-m", "llmserve_runpod", "--rp_serve_api", "--rp_api_port", str(port),
           "--rp_api_host", "127.0.0.1"]  # fmt: skip
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_up(proc, url + "/openapi.json", log)
            yield url
        finally:
            stop(proc)


@pytest.fixture(scope="module")
def server():
    """A plain ``llmserve serve`` with the pack installed."""
    port = free_port()
    cmd = [sys.executable, "-m", "llmserve", "serve", "--port", str(port), "--max-model-len", "512",
           "--served-model-name", "smol", "--responses-store", "memory"]  # fmt: skip
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, env={**os.environ, **BASE_ENV}, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_up(proc, url + "/health", log)
            yield url
        finally:
            stop(proc)
