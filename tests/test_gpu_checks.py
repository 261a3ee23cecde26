"""The first-GPU checklist script (tests/gpu/check.sh, tests/gpu/checks.py) run dry on CPU, so it
keeps working until a GPU runs it: tiny shapes, the kernels under the Triton interpreter, the
engine on the cpu backend. The structured stage is left out here (tests/test_bench.py runs the
same `llmserve bench throughput --structured json`)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["env", "kernels", "bitmask", "model", "speed", "tuning"]


def run_checks(out: Path, *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    pytest.importorskip("triton")
    env = dict(os.environ, CHECK_BUDGET="900")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        ["bash", str(ROOT / "tests/gpu/check.sh"), str(out), "", *options],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=1200,
    )  # fmt: skip
    report = json.loads((out / "figures.json").read_text()) if (out / "figures.json").exists() else {}
    return proc, report


@pytest.mark.slow  # nox -s slow: about a minute of CPU
def test_dry_run_produces_every_figure(tmp_path):
    proc, report = run_checks(tmp_path, "--device", "cpu", "--quick", "--stages", ",".join(STAGES))
    log = (tmp_path / "checks.log").read_text()
    assert proc.returncode == 0, log[-6000:]
    stages = report["stages"]
    assert {name: stage["status"] for name, stage in stages.items()} == dict.fromkeys(STAGES, "ok")
    assert "== environment" in log and "== done" in log and "no CUDA device visible to torch" in log
    figures = {name: stage["figures"] for name, stage in stages.items()}
    assert figures["env"]["versions"]["torch"] and figures["env"]["gpu"] == {"available": False}
    assert figures["kernels"]["summary"]["cases"] >= 8 and figures["kernels"]["summary"]["failed"] == 0
    assert "PASSED" in figures["bitmask"]["pytest"]["tests"].values()
    greedy = figures["model"]["cpu-float32-chunk16-vs-cpu-float32"]
    assert greedy["ok"] and greedy["equal"] and figures["model"]["run-cpu-float32"]["blocks_leaked"] == 0
    for mode in ("graphs", "eager"):
        assert set(figures["speed"][f"{mode}-decode-tok-s"]) == {"1", "4"}
        assert all(v > 0 for v in figures["speed"][f"{mode}-decode-tok-s"].values())
    assert figures["speed"]["ttft-32"]["min_ms"] > 0 and figures["speed"]["graphs-start"]["num_blocks"] > 0
    assert all(
        figures["tuning"][k]["best"]["us"] > 0
        for k in ("decode-b1-ctx40", "prefill-20", "rms-norm-rows2-h64")
    )
    headline = report["headline"]
    assert (
        headline["greedy"]["cpu-float32-chunk16-vs-cpu-float32"]["equal"]
        and headline["kernels"]["failed"] == 0
    )


def test_a_failing_stage_is_recorded_and_the_next_one_runs(tmp_path):
    """--device cuda without a GPU: every stage fails, says why, and the run goes on to the end."""
    proc, report = run_checks(tmp_path, "--device", "cuda", "--quick", "--stages", "env,tuning")
    assert proc.returncode == 1
    env, tuning = report["stages"]["env"], report["stages"]["tuning"]
    assert env["status"] == tuning["status"] == "failed"
    assert env["failed"] == ["gpu_required"] and "no CUDA device" in env["figures"]["gpu_required"]["error"]
    assert tuning["failed"] and all(not tuning["figures"][k]["ok"] for k in tuning["failed"])
    assert report["headline"]["status"] == {"env": "failed", "tuning": "failed"}
