"""A two-node Ray cluster on this machine (``ray start --head`` on 127.0.0.1 + ``ray start --address``
on 127.0.0.2, one CPU and its own resource each, small object stores, no dashboard), stopped with
``ray stop --force``."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from llmserve.sources import packs

RAY = [sys.executable, "-m", "ray.scripts.scripts"]
OBJECT_STORE = str(300 * 1024 * 1024)
# What every replica gets: 1 GiB of KV cache, the machine is shared.
ENV = {
    "LLMSERVE_KV_CACHE_SPACE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_metrics_report_interval_ms": "2000",
}  # metrics reach the export in 2 s (default 10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Cluster:
    address: str
    url: str  # Ray's HTTP proxy, on the head node
    metrics_ports: list[int]  # each node's Prometheus export port
    env: dict[str, str]


def _node_ports() -> list[str]:
    ports = {
        "--metrics-export-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    return [f"{flag}={port}" for flag, port in ports.items()]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Cluster:
    packs.ensure_model("smollm2")  # in the cache before any replica looks for it
    # Token authentication with a token of this run only. Every address on the loopback: Ray turns
    # 127.0.0.1 into the machine's own address unless "clusters" are off, which the head and the
    # drivers can be; the worker joins through the IPv4-mapped form, which Ray leaves alone.
    worker_env = {**os.environ, **ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {**worker_env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    gcs = free_port()
    head, worker = _node_ports(), _node_ports()
    common = ["--num-cpus=1", f"--object-store-memory={OBJECT_STORE}", "--disable-usage-stats"]
    try:
        _ray_start(["--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--include-dashboard=false",
                    f"--ray-client-server-port={free_port()}", '--resources={"head_node": 1}', *common, *head],
                   env)  # fmt: skip
        _ray_start([f"--address=[::ffff:127.0.0.1]:{gcs}", "--node-ip-address=127.0.0.2",
                    '--resources={"worker_node": 1}', *common, *worker], worker_env)  # fmt: skip
        ports = [int(arg.split("=")[1]) for arg in (head[0], worker[0])]
        yield Cluster(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{free_port()}", ports, env)
    finally:
        subprocess.run([*RAY, "stop", "--force"], env=env, capture_output=True)


def _ray_start(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run([*RAY, "start", *args], env=env, capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(
            f"ray start {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )


class Background:
    """A command (``llmserve ray serve``, ``serve run``) that runs until SIGINT; its output in a file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self.log = open(log, "w+")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-6000:]

    def wait_healthy(self, url: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"not healthy in {timeout}s:\n{self.output()}")

    def stop(self, timeout: float = 60) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def replica_ids(url: str, tries: int = 20) -> set[str]:
    """Replica ids seen answering ``tries`` plain requests."""
    return {httpx.get(url + "/ray/replica", timeout=10).json()["replica_id"] for _ in range(tries)}


def ray_metrics(ports: list[int], name: str) -> dict[str, float]:
    """``name``'s value per replica tag, summed over its other labels, from every node's export."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for port in ports:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.HTTPError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and "replica" in sample.labels:
                    replica = sample.labels["replica"]
                    values[replica] = values.get(replica, 0.0) + sample.value
    return values


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long scenario tests (the main project's nox -s slow runs them)")
