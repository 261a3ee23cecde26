"""The cuda backend's first-GPU checklist (docs/PERFORMANCE.md) in one run, within a time budget.

    python tests/gpu/checks.py --out DIR [--device cuda|cpu] [--quick] [--budget SECONDS]
                               [--stages kernels,model,...] [--tokenizer DIR]

Stages, most valuable first, each in its own process with its own time box (a hung Triton compile
or a poisoned CUDA context ends that stage only; what it measured before is kept):

  env         the GPU, driver, torch, triton
  kernels     every Triton kernel compiled for the device vs its plain-torch reference (fp16, bf16)
  bitmask     xgrammar's bitmask kernel on CUDA tensors (pytest tests/test_bitmask_kernels.py)
  model       a SmolLM2-135M-shaped random Llama through the engine: cuda eager / cuda graphs / cpu
  speed       decode tok/s at batch 1-128 with and without CUDA graphs, TTFT 512/2k/8k, KV sizing
  structured  `llmserve bench throughput --structured json` (needs xgrammar and a tokenizer)
  tuning      kernel variants on Llama-3-8B shapes: decode tile/splits, prefill tiles/stages, RMSNorm warps

DIR gets figures.json (rewritten after every stage) and checks.log (everything printed).
``--device cpu --quick`` runs the same logic on tiny shapes on CPU (kernels under the Triton
interpreter): tests/test_gpu_checks.py runs it so the script keeps working between GPU runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (name, module, seconds on a GPU, seconds with --quick: generous, the dry run shares a loaded CPU)
STAGES = [
    ("env", "stages_env", 45, 60),
    ("kernels", "kernel_checks", 150, 120),
    ("bitmask", "stages_env", 60, 120),
    ("model", "model_checks", 100, 120),
    ("speed", "speed_checks", 150, 120),
    ("structured", "speed_checks", 75, 180),
    ("tuning", "tuning", 100, 120),
]
MIN_STAGE_S = 15  # a stage with less time than this left is skipped


class Context:
    """What a stage gets: the options, a place for files, and ``record`` (written at once, so a
    stage killed by its time box keeps what it measured)."""

    def __init__(self, args, figures_path: Path) -> None:
        self.device, self.quick, self.work = args.device, args.quick, Path(args.work)
        self.tokenizer = Path(args.tokenizer) if args.tokenizer else None
        self.deadline = time.monotonic() + args.timeout
        self.figures_path = figures_path
        self.figures: dict = {}
        self.failed: list[str] = []

    def record(self, key: str, value) -> None:
        self.figures[key] = value
        tmp = self.figures_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"figures": self.figures, "failed": self.failed}, indent=1, default=str))
        tmp.replace(self.figures_path)

    def attempt(self, key: str, fn, *args, **kwargs):
        """Run one sub-check: its result, or None when it raised (the error is recorded under
        ``key`` and marks the stage failed, without stopping it)."""
        start = time.monotonic()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # recorded, the stage goes on with its next check
            traceback.print_exc()
            self.failed.append(key)
            self.record(key, {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]})
            return None
        print(f"  {key}: ok ({time.monotonic() - start:.1f} s)", flush=True)
        return result

    def check(self, key: str, fn, *args, **kwargs):
        """``attempt``, and record its result under ``key``."""
        result = self.attempt(key, fn, *args, **kwargs)
        if result is not None:
            self.record(key, result)
        return result

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


def headline(stages: dict) -> dict:
    """The figures docs/PERFORMANCE.md asks for, pulled out of the stages' records."""
    fig = {name: stage.get("figures", {}) for name, stage in stages.items()}
    out: dict = {"status": {name: stage["status"] for name, stage in stages.items()}}
    gpu = fig.get("env", {}).get("gpu") or {}
    out["gpu"] = {k: gpu.get(k) for k in ("name", "sm_count", "total_gib")} if gpu.get("available") else None
    out["kernels"] = fig.get("kernels", {}).get("summary")
    out["bitmask"] = (fig.get("bitmask", {}).get("pytest") or {}).get("summary")
    out["greedy"] = {k: {"ok": v.get("ok"), "equal": v.get("equal"), "max_logprob_diff": v.get("max_logprob_diff")}
                     for k, v in fig.get("model", {}).items() if "-vs-" in k and isinstance(v, dict)}  # fmt: skip
    speed = fig.get("speed", {})
    out["decode_tok_s"] = {m: speed.get(f"{m}-decode-tok-s") for m in ("graphs", "eager")}
    out["ttft_min_ms"] = {
        k[5:]: v.get("min_ms") for k, v in speed.items() if k.startswith("ttft-") and "warm" not in k
    }
    out["kv"] = speed.get("graphs-start")
    out["structured_overhead_percent"] = (fig.get("structured", {}).get("bench") or {}).get(
        "overhead_percent"
    )
    out["tuning_best"] = {
        k: v.get("best") for k, v in fig.get("tuning", {}).items() if isinstance(v, dict) and "best" in v
    }
    return out


def run_stage(args) -> int:
    """Child process: run one stage."""
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    module = importlib.import_module(dict((n, m) for n, m, *_ in STAGES)[args.stage])
    ctx = Context(args, Path(args.figures))
    ctx.record("started", time.strftime("%Y-%m-%d %H:%M:%S"))
    getattr(module, f"stage_{args.stage}")(ctx)
    return 1 if ctx.failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="Directory for figures.json and checks.log.")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="Tiny shapes (the CPU dry run).")
    parser.add_argument("--budget", type=float, default=540.0, help="Seconds for all stages together.")
    parser.add_argument("--stages", default=",".join(n for n, *_ in STAGES))
    parser.add_argument("--tokenizer", help="A directory with tokenizer.json (for the structured stage).")
    parser.add_argument("--work", help="Scratch directory (random model weights); default a temp dir.")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # the child process's side
    parser.add_argument("--figures", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        return run_stage(args)

    import tempfile

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    own_work = not args.work
    work = Path(args.work or tempfile.mkdtemp(prefix="llmserve-gpu-checks-"))
    work.mkdir(parents=True, exist_ok=True)
    wanted = [s for s in args.stages.split(",") if s]
    unknown = set(wanted) - {n for n, *_ in STAGES}
    if unknown:
        parser.error(f"unknown stages: {', '.join(sorted(unknown))}")
    log = open(out / "checks.log", "a", buffering=1)
    report = {"argv": sys.argv[1:], "device": args.device, "quick": args.quick, "budget_s": args.budget,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "stages": {}}  # fmt: skip
    deadline = time.monotonic() + args.budget

    def say(line: str) -> None:
        print(line, flush=True)
        log.write(line + "\n")

    def save() -> None:
        (out / "figures.json").write_text(json.dumps(report, indent=1, default=str))

    for name, _, gpu_s, quick_s in STAGES:
        if name not in wanted:
            continue
        left = deadline - time.monotonic() - 5
        box = min(quick_s if args.quick else gpu_s, left)
        if box < MIN_STAGE_S:
            report["stages"][name] = {"status": "skipped", "reason": f"{left:.0f} s of the budget left"}
            say(f"== {name}: skipped ({left:.0f} s left)")
            save()
            continue
        say(f"== {name} (time box {box:.0f} s)")
        figures = work / f"{name}.json"
        figures.unlink(missing_ok=True)
        env = dict(os.environ)
        if args.device == "cpu" and name in ("kernels", "tuning"):
            env["TRITON_INTERPRET"] = "1"  # no GPU: the kernels run in Triton's interpreter
        cmd = [sys.executable, str(HERE / "checks.py"), "--out", str(out), "--device", args.device,
               "--work", str(work), "--stage", name, "--figures", str(figures), "--timeout", str(box)]  # fmt: skip
        cmd += ["--quick"] if args.quick else []
        cmd += ["--tokenizer", args.tokenizer] if args.tokenizer else []
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=box)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, status = None, "timeout"
        entry = {"status": status, "seconds": round(time.monotonic() - start, 1), "time_box_s": round(box)}
        if rc not in (0, 1, None):
            entry["exit_code"] = rc
        if figures.exists():
            entry.update(json.loads(figures.read_text()))
        report["stages"][name] = entry
        failed = entry.get("failed") or []
        say(
            f"== {name}: {status} in {entry['seconds']} s"
            + (f"; failed: {', '.join(failed)}" if failed else "")
        )
        save()
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    report["headline"] = headline(report["stages"])
    save()
    say("== headline figures\n" + json.dumps(report["headline"], indent=1, default=str))
    if own_work:
        shutil.rmtree(work, ignore_errors=True)  # the random model's weights
    bad = [n for n, s in report["stages"].items() if s["status"] in ("failed", "timeout")]
    say(
        f"== done: {len(report['stages'])} stages, not ok: {', '.join(bad) or 'none'}; {out / 'figures.json'}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
