"""The benchmark commands run end to end on tiny workloads (figures live in docs/PERFORMANCE.md)."""

from __future__ import annotations

import json
import subprocess
import sys


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmserve", "bench", *args], capture_output=True, text=True, timeout=timeout
    )


def test_bench_serve_sweeps_llmserve_and_a_peer(server, tmp_path):
    """The bench starts its own llmserve and compares it with a second real server at every level."""
    out = tmp_path / "serve.json"
    result = run(
        "serve", "--model", "smollm2", "--serve-args", "--embedding-model none --max-model-len 512",
        "--compare-url", f"peer={server}", "--concurrency", "1,2", "--num-prompts", "4", "--output-len", "8",
        "--input-len", "10-20", "--json", str(out), timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout[result.stdout.index("cpu: ") :]
    assert "AMX" in table.splitlines()[0]
    rows = [
        line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "conc" not in line
    ]
    cells = [[c.strip() for c in row] for row in rows]
    assert sorted((c[0], c[1]) for c in cells) == [
        ("llmserve", "1"),
        ("llmserve", "2"),
        ("peer", "1"),
        ("peer", "2"),
    ]
    for c in cells:
        assert c[2] == "4" and c[3] == "0" and float(c[4]) > 0 and c[8] == "8.0" and c[9] == "usage"
        assert c[10].endswith("x") if c[0] == "peer" else c[10] == ""
    report = json.loads(out.read_text())
    assert [s["name"] for s in report["servers"]] == ["llmserve", "peer"]
    assert report["servers"][1]["url"] == server and report["servers"][0]["extra_body"] == {
        "ignore_eos": True
    }
    assert isinstance(report["cpu"]["amx"], bool) and report["cpu"]["model"]
    figures = {(r["server"], r["concurrency"]): r for r in report["results"]}
    assert sorted(figures) == [("llmserve", 1), ("llmserve", 2), ("peer", 1), ("peer", 2)]
    for r in figures.values():
        assert r["completed"] == 4 and r["failed"] == 0 and r["errors"] == []
        assert r["total_output_tokens"] == 32 and r["token_count"] == "usage"
        assert r["ttft_ms"]["median"] > 0 and r["itl_ms"]["median"] > 0 and r["total_prompt_tokens"] > 4 * 10


def test_bench_serve_refuses_bad_options():
    result = run("serve", "--url", "http://127.0.0.1:9", "--concurrency", "0")
    assert result.returncode == 2 and "--concurrency" in result.stderr
    result = run("serve", "--url", "http://127.0.0.1:9", "--compare-url", "a=b")
    assert result.returncode == 2 and "NAME=URL" in result.stderr


def test_bench_serve_reports_an_unreachable_server_cleanly():
    result = run("serve", "--url", "http://127.0.0.1:9", "--concurrency", "1", "--num-prompts", "1")
    assert result.returncode == 1 and "error:" in result.stderr and "Traceback" not in result.stderr


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


def test_bench_throughput_runs_quantised():
    """--quantization reaches the engine: the workload line names it and a bad method is refused."""
    result = run(
        "throughput", "--model", "smollm2", "--quantization", "int4", "--num-prompts", "2", "--input-len", "8",
        "--output-len", "4", "--max-num-seqs", "2", "--hf-batch-size", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--quantization int4" in result.stdout
    bad = run("throughput", "--model", "smollm2", "--quantization", "int3", "--hf-batch-size", "0")
    assert bad.returncode != 0 and "int3" in (bad.stdout + bad.stderr)
