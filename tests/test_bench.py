"""The benchmark commands run end to end on tiny workloads (figures live in docs/PERFORMANCE.md)."""

from __future__ import annotations

import json
import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmserve", "bench", *args], capture_output=True, text=True, timeout=300
    )


def test_bench_serve_compares_two_servers(server, tmp_path):
    out = tmp_path / "serve.json"
    result = run(
        "serve", "--base-url", server, "--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--num-prompts", "4",
        "--input-len", "16", "--output-len", "4", "--max-concurrency", "2", "--ignore-eos",
        "--compare-url", server, "--result-file", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "output throughput ratio" in result.stdout
    first, second = json.loads(out.read_text())
    assert first["completed"] == 4 and first["failed"] == 0 and first["total_output_tokens"] == 16
    assert first["ttft_ms"]["median"] > 0 and second["output_throughput"] > 0


def test_bench_throughput_reports_ratio(smollm2_dir):
    result = run(
        "throughput", "--model", str(smollm2_dir), "--num-prompts", "2", "--input-len", "8", "--output-len", "4",
        "--hf-batch-size", "2", "--prefix-len", "64",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "llmserve: 8 tokens" in result.stdout
    assert "ratio llmserve / transformers" in result.stdout and "prefix caching: TTFT" in result.stdout


def test_bench_throughput_structured_reports_the_overhead(smollm2_dir):
    result = run(
        "throughput", "--model", str(smollm2_dir), "--num-prompts", "2", "--input-len", "8", "--output-len", "8",
        "--hf-batch-size", "0", "--structured", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "structured json: 16 tokens" in result.stdout and "unconstrained: 16 tokens" in result.stdout
    assert "structured-output overhead per token:" in result.stdout and "cpu: " in result.stdout
