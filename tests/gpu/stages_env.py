"""Stages ``env`` (what the checks ran on) and ``bitmask`` (xgrammar's kernel on CUDA, via pytest)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _versions() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("triton", "transformers", "xgrammar", "pydantic", "pydantic-settings", "numpy", "pytest"):
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "not installed"
    # Triton builds its launcher with a C compiler at the first kernel; the CPU kernels need one too.
    info["c_compiler"] = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc") or "none found"
    try:
        import xgrammar  # noqa: F401
    except Exception as exc:  # installed but broken is worth knowing
        info["xgrammar"] += f" (import fails: {type(exc).__name__}: {exc})"
    return info


def _gpu() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"available": False}
    props = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info(0)
    return {
        "available": True,
        "count": torch.cuda.device_count(),
        "name": props.name,
        "sm_count": props.multi_processor_count,
        "capability": f"{props.major}.{props.minor}",
        "total_gib": round(total / 2**30, 2),
        "free_gib_at_start": round(free / 2**30, 2),
    }


def stage_env(ctx) -> None:
    ctx.check("versions", _versions)
    ctx.check("gpu", _gpu)
    if ctx.device == "cuda":
        ctx.check("gpu_required", lambda: _gpu()["available"] or _fail("torch sees no CUDA device"))


def _fail(message: str):
    raise RuntimeError(message)


def _pytest(ctx, node: str, keyword: str) -> dict:
    """Run pytest on one test file (no conftest: it needs the HTTP test clients), one line per test."""
    cmd = [sys.executable, "-m", "pytest", node, "-k", keyword, "-q", "-rA", "--noconftest",
           "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestConfigWarning"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(ctx.time_left() - 5, 10))
    print(proc.stdout[-6000:], proc.stderr[-3000:], flush=True)
    outcomes = {
        m.group(2): m.group(1) for m in re.finditer(r"^(PASSED|FAILED|ERROR) (\S+)", proc.stdout, re.M)
    }
    skipped = re.findall(r"^SKIPPED \[\d+\] (.*)$", proc.stdout, re.M)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    result = {"exit_code": proc.returncode, "summary": summary, "tests": outcomes, "skipped": skipped}
    if proc.returncode not in (0, 5):  # 5: nothing collected (xgrammar missing: all skipped is 0)
        raise AssertionError(f"pytest failed: {summary}  {result['tests']}")
    return result


def stage_bitmask(ctx) -> None:
    result = ctx.check("pytest", _pytest, ctx, "tests/test_bitmask_kernels.py", "cuda or warm_up")
    if ctx.device == "cuda" and result is not None:
        ran = [name for name, outcome in result["tests"].items() if "cuda" in name and outcome == "PASSED"]
        ctx.check("cuda_dtypes_passed", lambda: len(ran) == 3 or _fail(f"cuda tests passed: {ran}"))
