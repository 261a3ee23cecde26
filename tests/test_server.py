"""`llmserve serve` as a user runs it: start log, health, models, graceful shutdown."""

from __future__ import annotations

import signal

import httpx
import pytest
from conftest import ServerProcess


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_starts_logs_and_stops_gracefully(smollm2_dir, minilm_dir, sig):
    proc = ServerProcess("--max-model-len", "1024", "--served-model-name", "smol,smol-alias")
    try:
        health = httpx.get(proc.url + "/health")
        assert health.status_code == 200
        models = httpx.get(proc.url + "/v1/models").json()
        ids = [m["id"] for m in models["data"]]
        assert "smol" in ids and "sentence-transformers/all-MiniLM-L6-v2" in ids
    finally:
        code = proc.stop(sig)
    log = proc.output()
    assert code == 0, log
    assert "Traceback" not in log
    start = next(line for line in log.splitlines() if "| backend" in line)
    import torch

    dtype = "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"  # the CPU's "auto"
    assert "model smol" in start and "backend cpu" in start and f"dtype {dtype}" in start
    assert "KV cache" in start and "tokens" in start
    assert f"serving on http://127.0.0.1:{proc.port}" in log


def test_default_model_is_listed(server):
    models = httpx.get(server + "/v1/models").json()
    assert models["data"][0]["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
