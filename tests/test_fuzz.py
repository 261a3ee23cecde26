"""Schema fuzzing: schemathesis over the server's own /openapi.json, positive and negative cases
of every operation, against a real server with SmolLM2 and MiniLM.

No 5xx, every 4xx in the protocol's error shape, responses as their schemas say, no operation
rejecting most of what its schema allows; afterwards /health answers, a greedy request gives the
same text as before, nothing runs and every KV block is free. The suite tries about 160
cases (LLMSERVE_FUZZ_EXAMPLES per operation, default 5); `nox -s fuzz` a few thousand.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import ServerProcess

HERE = Path(__file__).parent
EXAMPLES = int(os.environ.get("LLMSERVE_FUZZ_EXAMPLES", "5"))
SEED = os.environ.get("LLMSERVE_FUZZ_SEED", "1604")
# The coverage phase (boundary values of every field) alone sends thousands: nox -s fuzz runs it.
PHASES = os.environ.get("LLMSERVE_FUZZ_PHASES", "examples,fuzzing,stateful")
GREEDY = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}


def _schemathesis() -> list[str]:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if exe is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    return [exe]


def _idle(http: httpx.Client) -> None:
    """Nothing in flight and every KV block free (prefix-cached blocks count as free)."""
    deadline = time.monotonic() + 30
    while True:
        status = http.get("/v1/status").json()
        if (
            status["num_running"] == status["num_waiting"] == 0
            and status["memory"]["kv_cache_used_bytes"] == 0
        ):
            return
        assert time.monotonic() < deadline, status
        time.sleep(0.5)


def test_schemathesis_finds_no_server_error(smollm2_dir, minilm_dir, tmp_path):
    cmd = _schemathesis()
    # --default-max-tokens 4: requests that leave max_tokens out stay short too
    proc = ServerProcess(
        "--max-model-len", "512", "--default-max-tokens", "4", env={"LLMSERVE_RESPONSES_STORE": "memory"}
    )
    try:
        with proc.http(timeout=60) as http:
            before = http.post("/v1/completions", json=GREEDY).json()["choices"][0]["text"]
            report = tmp_path / "report.json"
            run = subprocess.run(
                [*cmd, "--config-file", str(HERE / "fuzz/schemathesis.toml"), "--no-color", "run",
                 proc.url + "/openapi.json", "--max-examples", str(EXAMPLES), "--seed", SEED, "--mode", "all",
                 "--phases", PHASES,
                 "--report", "json", "--report-json-path", str(report)],
                cwd=HERE.parent, capture_output=True, text=True, timeout=3600,
            )  # fmt: skip
            summary = run.stdout[-6000:]
            print(summary)
            assert run.returncode == 0, summary + run.stderr[-3000:]
            cases = _tested_cases(report)
            print(
                f"schemathesis: {cases} test cases ({PHASES}), {EXAMPLES} examples per operation, seed {SEED}"
            )
            assert cases >= 100
            assert http.get("/health").status_code == 200
            after = http.post("/v1/completions", json=GREEDY).json()["choices"][0]["text"]
            assert after == before
            _idle(http)
    finally:
        proc.stop()
    assert "Traceback" not in proc.output(), proc.output()[-5000:]


def _tested_cases(report: Path) -> int:
    """Test cases schemathesis generated and sent (its JSON report), none errored."""
    cases = json.loads(report.read_text())["test_cases"]
    assert cases["errored"] == 0, cases
    return cases["generated"]
