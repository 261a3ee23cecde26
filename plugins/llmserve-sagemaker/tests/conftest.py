"""A real `llmserve serve` with the pack installed, on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sagemaker_free_env() -> dict[str, str]:
    """This process's environment without SageMaker's variables (each test sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_", "LLMSERVE_PORT"))}


class Server:
    """`llmserve serve ARGS` until stopped; ``port`` None lets the environment choose it."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="llmserve-sagemaker-", suffix=".log")
        base = {**sagemaker_free_env(), "LLMSERVE_KV_CACHE_SPACE": "1"}
        cmd = [sys.executable, "-m", "llmserve", "serve", *args]
        if port is None:
            cmd += ["--port", str(self.port)]
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**base, **(env or {})}
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not start:\n" + self.output())

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def sagemaker_server():
    """SmolLM2 and MiniLM; configured the SageMaker way (SM_* variables), ``--port`` given."""
    env = {"SM_VLLM_SERVED_MODEL_NAME": "sm-chat", "SM_LLMSERVE_ENABLE_SERVER_LOAD_TRACKING": ""}
    server = Server("--max-model-len", "512", env=env)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def chat_only_server():
    """SmolLM2 alone, on a backend whose step fails for a request with seed 666 (the engine dies)."""
    server = Server(
        "--max-model-len",
        "512",
        "--embedding-model",
        "none",
        "--backend",
        "flaky",
        "--tool-parser-plugin",
        str(HERE / "flaky_backend.py"),
    )
    try:
        yield server.url
    finally:
        server.stop()
