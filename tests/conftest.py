"""Shared fixtures: the real models (pulled once into the cache) and a real server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llmserve.sources import packs, transformers_index

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
transformers_index.install()  # the test modules import transformers too


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return packs.ensure_model("smollm2")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return packs.ensure_model("minilm")


@pytest.fixture(scope="session")
def tok(smollm2_dir):
    """SmolLM2's tokenizer, for exact token counts."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def client(server):
    """The official OpenAI SDK pointed at the session server."""
    import openai

    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def model(client) -> str:
    return client.models.list().data[0].id


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`llmserve serve` in a subprocess on a free port; stopped with SIGINT."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 180, scheme: str = "http",
        uds: str | None = None,
    ) -> None:  # fmt: skip
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}" if uds is None else "http://localhost"
        self.uds = uds
        if uds is not None:
            args = (*args, "--uds", uds)
        cmd = [sys.executable, "-m", "llmserve", "serve", *args, "--port", str(self.port)]
        self.log = open(Path(os.environ.get("PYTEST_TMPDIR", "/tmp")) / f"llmserve-{self.port}.log", "w+")
        # 1 GiB of KV cache unless a test asks for more: several servers share this machine's memory
        base = {"LLMSERVE_KV_CACHE_SPACE": "1", **os.environ}
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**base, **(env or {})}
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with self.http(timeout=2) as http:
                    if http.get("/health").status_code == 200:
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.output()}")

    def http(self, **kwargs) -> httpx.Client:
        """A client for this server (over its Unix socket with --uds; TLS unverified)."""
        transport = httpx.HTTPTransport(uds=self.uds) if self.uds else None
        return httpx.Client(base_url=self.url, transport=transport, verify=False, **kwargs)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self, sig: int = 2, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="session")
def server(smollm2_dir, minilm_dir):
    """A real server with the default models; yields its base URL. float32 on every CPU: tests
    compare greedy texts across prefix-cache hits and batch shapes, where bf16's rounding (the
    `auto` dtype on CPUs with native bf16) flips near-tied tokens."""
    proc = ServerProcess(
        "--max-model-len", "2048", "--dtype", "float32", "--enable-sleep-mode", "--enable-server-load-tracking"
    )  # fmt: skip
    try:
        yield proc.url
    finally:
        proc.stop()
