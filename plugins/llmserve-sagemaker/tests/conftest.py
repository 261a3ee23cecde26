from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest


@pytest.fixture(scope="session")
def sagemaker_server():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmserve", "serve", "--port", str(port), "--max-model-len", "512"]
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise RuntimeError("server did not start")
        yield url
    finally:
        proc.send_signal(2)
        proc.wait(30)
