"""Servers a serving benchmark talks to: started here or given by URL, and what each accepts.

A server started by the benchmark is a command line with ``{port}`` in it, run until the sweep ends.
Before the sweep each server is probed once (this also warms it up): which model name to send, and
whether it takes a fixed output length. llama.cpp's ``llama-server`` (recognised by its ``/props``)
gets ``n_predict`` and ``ignore_eos``; any other server gets vLLM's ``ignore_eos`` unless it refuses
the field with a 4xx, in which case its requests go without it (and the table shows the token count).
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Server:
    name: str
    url: str
    model: str | None = None  # None: the first id of GET /v1/models
    kind: str = "openai"  # "llama.cpp" when /props says so
    extra_body: dict = field(default_factory=dict)
    fixed_length: bool = False  # a request field asks for exactly output_len tokens
    started: Started | None = None


class Started:
    """A server process this benchmark started (stdout/stderr to a log file), stopped with SIGINT."""

    def __init__(self, name: str, command: str, timeout: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = shlex.split(command.replace("{port}", str(self.port)))
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            self.argv, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{name} did not answer /v1/models in {timeout:.0f} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name) as fh:
            return fh.read()

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the benchmark dies, so a killed benchmark leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def llmserve_command(model: str, serve_args: str) -> str:
    """``llmserve serve`` for ``model`` with this interpreter, on ``{port}``."""
    return shlex.join([sys.executable, "-m", "llmserve", "serve", model]) + f" {serve_args} --port {{port}}"


def parse_pairs(values: list[str], option: str) -> list[tuple[str | None, str]]:
    """``NAME=VALUE`` items (a bare ``VALUE`` has no name)."""
    pairs = []
    for value in values:
        name, sep, rest = value.partition("=")
        if sep and name and "/" not in name and ":" not in name:
            pairs.append((name, rest))
        elif "://" in value or not sep:
            pairs.append((None, value))
        else:
            raise ValueError(f"{option} takes NAME=VALUE, got {value!r}")
    return pairs


def probe(server: Server, output_len: int, chat: bool, api_key: str | None, ignore_eos: bool) -> None:
    """Fill in the model name, the kind and the fields for a fixed output length; warms the server."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=server.url, headers=headers, timeout=600) as http:
        if server.model is None:
            models = http.get("/v1/models")
            models.raise_for_status()
            data = models.json().get("data") or []
            if not data:
                raise RuntimeError(f"{server.name}: /v1/models lists no model")
            server.model = data[0]["id"]
        try:
            props = http.get("/props")
            if props.status_code == 200 and "default_generation_settings" in props.json():
                server.kind = "llama.cpp"
        except (httpx.HTTPError, ValueError):
            pass
        if ignore_eos:
            server.extra_body = {"ignore_eos": True}
            if server.kind == "llama.cpp":
                server.extra_body["n_predict"] = output_len
        for extra in ([server.extra_body] if server.extra_body else []) + [{}]:
            body = {"model": server.model, "max_tokens": 8, "temperature": 0.0, **extra}
            if chat:
                body["messages"] = [{"role": "user", "content": "Say hello."}]
                response = http.post("/v1/chat/completions", json=body)
            else:
                body["prompt"] = "Say hello."
                response = http.post("/v1/completions", json=body)
            if response.status_code == 200:
                server.extra_body = extra
                server.fixed_length = bool(extra)
                return
            if not 400 <= response.status_code < 500:
                break
        raise RuntimeError(f"{server.name} ({server.url}): probe request failed: HTTP "
                           f"{response.status_code} {response.text[:300]}")  # fmt: skip


def cpu_info() -> dict:
    """CPU model, usable cores and AMX presence (lscpu's flags; /proc/cpuinfo where lscpu is missing)."""
    model, flags = "unknown CPU", ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "Flags":
                flags = value
    except (OSError, subprocess.SubprocessError):
        pass
    if not flags:
        try:
            info = open("/proc/cpuinfo").read()
            flags = next((ln.split(":", 1)[1] for ln in info.splitlines() if ln.startswith("flags")), "")
            model = next(
                (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
                model,
            )
        except OSError:
            pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "cores": cores, "amx": "amx_tile" in flags.split(),
            "avx512_bf16": "avx512_bf16" in flags.split()}  # fmt: skip
