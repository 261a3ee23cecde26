"""A real `llmserve serve` with the pack installed (SmolLM2 and MiniLM), and MCP clients."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

API_KEY = "mcp-test-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lan_address() -> str | None:
    """This machine's address on a non-loopback interface, or None (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.254.254.254", 1))
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


class Server:
    """`llmserve serve ARGS --port N` until stopped."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="llmserve-mcp-", suffix=".log")
        base = {**os.environ, "LLMSERVE_KV_CACHE_SPACE": "1"}
        base.pop("LLMSERVE_MCP_ALLOW_REMOTE", None)
        cmd = [
            sys.executable,
            "-m",
            "llmserve",
            "serve",
            "--max-model-len",
            "1024",
            "--dtype",  # greedy texts compared: bf16 (auto on CPUs with native bf16) flips near ties
            "float32",
            *args,
            "--port",
            str(self.port),
        ]
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

    def stop(self) -> float:
        """Stop with SIGINT; returns the seconds it took."""
        began = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return time.monotonic() - began


@pytest.fixture(scope="module")
def server():
    """Bound to every interface, with an API key; MCP stays local-only."""
    proc = Server("--host", "0.0.0.0", "--api-key", API_KEY)
    try:
        yield proc
    finally:
        proc.stop()
        proc.log.close()


@contextlib.asynccontextmanager
async def mcp_client(url: str, key: str | None = API_KEY, **options):
    """The SDK's own client over streamable HTTP, sending ``key`` as a bearer token."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http:
        async with Client(streamable_http_client(url + "/mcp", http_client=http), **options) as client:
            yield client
