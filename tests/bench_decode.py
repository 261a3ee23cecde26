"""Decode steps of SmolLM2 on CPU against the machine's limits, in one run (not a test).

    PYTHONPATH=src:tests python tests/bench_decode.py [--batches 1,32,64] [--context 200]

For the float model (--dtype) and each --quantization method: the runner's decode step time at
each batch (the best of ROUNDS rounds, the variants alternating), its GFLOP/s (2 x linear weights x rows, plus
attention over the context) against torch.matmul on the very same shapes in the same dtype
(x [batch, K] @ W^T for every projection and the LM head), and at batch 1 the bytes of weights
read per step against a measured memory copy rate: the weight-bandwidth floor.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from bench_quant import BLOCK, Seqs, cpu_line
from torch import nn

from llmserve.backends.torch.packed_linear import PackedLinear
from llmserve.backends.torch.quant_linear import QuantLinear
from llmserve.backends.torch.runner import TorchModelRunner
from llmserve.sources import packs

VARIANTS = (("float", None), ("int8", "int8"), ("int4 g32", "int4"), ("gguf Q4_1", "gguf"))


def linears(model: nn.Module) -> list[nn.Module]:
    """Every projection and the LM head (tied weights once)."""
    seen, out = set(), []
    for m in model.modules():
        if isinstance(m, (QuantLinear, nn.Linear, PackedLinear)) and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


def weight_bytes(m: nn.Module) -> int:
    if isinstance(m, QuantLinear):
        return m.weight_bytes()
    if isinstance(m, PackedLinear):  # bf16, in oneDNN's layout
        return m.in_features * m.out_features * 2
    return m.weight.numel() * m.weight.element_size()


def matmul_seconds(shapes: list[tuple[int, int]], rows: int, dtype: torch.dtype, rounds: int = 5) -> float:
    """Best time of torch.matmul over every (out, in) shape at ``rows`` rows."""
    weights = [torch.randn(n, k, dtype=dtype) for n, k in shapes]
    xs = {k: torch.randn(rows, k, dtype=dtype) for _, k in shapes}
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        for w in weights:
            torch.matmul(xs[w.shape[1]], w.T)
        best = min(best, time.perf_counter() - start)
    return best


def copy_rate(mib: int = 512) -> float:
    """Bytes per second of a large tensor copy (read + write counted as one pass each)."""
    src, dst = torch.empty(mib << 18), torch.empty(mib << 18)
    dst.copy_(src)
    start = time.perf_counter()
    dst.copy_(src)
    return 2 * src.numel() * 4 / (time.perf_counter() - start)


def step_seconds(runner, prompt: list[int], batch: int, steps: int) -> float:
    seqs = Seqs(runner, [prompt] * batch, steps + 1)
    seqs.step()
    start = time.perf_counter()
    for _ in range(steps):
        seqs.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,32,64")
    ap.add_argument("--context", type=int, default=200, help="prompt tokens of every sequence")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"), help="the model's and the matmul's"
    )
    ap.add_argument(
        "--variants", default=",".join(n for n, _ in VARIANTS), help="comma-separated, of VARIANTS"
    )
    args = ap.parse_args()
    unknown = set(args.variants.split(",")) - {n for n, _ in VARIANTS}
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; known: {[n for n, _ in VARIANTS]}")
    batches = [int(b) for b in args.batches.split(",")]
    model_dir = str(packs.ensure_model("smollm2"))
    prompt = list(range(1000, 1000 + args.context))
    runners = {}
    dtype = getattr(torch, args.dtype)
    wanted = args.variants.split(",")
    for name, quant in VARIANTS:
        if name not in wanted:
            continue
        runner = TorchModelRunner(model_dir, args.dtype, quantization=quant, group_size=32)
        runner.load()
        per = -(-(args.context + args.steps + 2) // BLOCK)
        runner.allocate_kv_cache(max(batches) * per + 8, BLOCK)
        runners[name] = runner
    first = next(iter(runners.values()))
    cfg = first.cfg
    shapes = [(m.out_features, m.in_features) for m in linears(first.model)]
    params = sum(n * k for n, k in shapes)
    ctx = args.context + args.steps // 2
    attn_flops = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * ctx  # per sequence per step
    best = {(n, b): math.inf for n in runners for b in batches}
    for _ in range(int(os.environ.get("ROUNDS", "3"))):
        for name, runner in runners.items():
            for b in batches:
                best[name, b] = min(best[name, b], step_seconds(runner, prompt, b, args.steps))
    peak = {b: 2 * params * b / matmul_seconds(shapes, b, dtype) for b in batches}
    rate = copy_rate()
    print(f"CPU: {cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads; context {ctx}")
    print(f"copy rate {rate / 1e9:.1f} GB/s; torch.matmul on the model's shapes, {args.dtype}: "
          + ", ".join(f"batch {b} {peak[b] / 1e9:.1f} GFLOP/s" for b in batches))  # fmt: skip
    print(
        "\n| weights | batch | step ms | tok/s | GFLOP/s | of matmul on the same shapes | weights read | of copy-rate floor |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, runner in runners.items():
        read = sum(weight_bytes(m) for m in linears(runner.model))
        for b in batches:
            t = best[name, b]
            flops = (2 * params + attn_flops) * b / t
            floor = f"{read / rate / t:.0%}" if b == 1 else ""
            print(f"| {name} | {b} | {t * 1e3:.1f} | {b / t:.0f} | {flops / 1e9:.1f} | {flops / peak[b]:.0%} "
                  f"| {read / 2**20:.0f} MiB | {floor} |")  # fmt: skip


if __name__ == "__main__":
    main()
