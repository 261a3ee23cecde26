"""Attention and long prompts on CPU (SmolLM2), before and after in one run (not a test).

    PYTHONPATH=src:tests python tests/bench_attention.py [--lengths 2048,7060] [--rounds 2] [--profile]

- memory bandwidth (a large torch copy) and the matmul peak (2048x2048, run dtype);
- paged decode attention at batch 64, context 1k: bytes of K/V read per call / time, for the
  fused C kernel and for the torch path (gather + SDPA), against that bandwidth;
- prefill time to first token through the engine (max-model-len 8192) for each prompt length,
  with the dense-mask path ("masked", as before) and the mask-free split ("split", now), the
  variants alternated ``--rounds`` times (best kept; the machine is shared, so the matmul peak
  is re-measured each round and its best kept too), then the same prompt again with its prefix
  cached; GFLOP/s counts 2 * linear params * tokens plus causal
  attention 4 * layers * heads * head_dim * n(n+1)/2;
- both paths' logits on one prompt prefilled in chunks (so cached prefixes are exercised) and
  their greedy tokens.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from bench_quant import cpu_line

from llmserve.backends.base import Batch, BatchItem
from llmserve.backends.torch import runner as runner_module
from llmserve.backends.torch.attention import AttentionMetadata, DecodeGroup, paged_attention
from llmserve.backends.torch.cpu_kernels import CpuKernels
from llmserve.bench.throughput import matmul_peak_flops, random_prompts
from llmserve.engine.device_thread import device_thread
from llmserve.engine.sampling import SamplingParams
from llmserve.offline import LLM

SPLIT = runner_module.split_supported


def best_time(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bandwidth(mib: int = 512) -> float:
    """Bytes/s of a large copy (read + write counted), best of 5."""
    src = torch.ones(mib * 2**18)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / best_time(lambda: dst.copy_(src), 5)


def decode_bandwidth(dtype, batch: int = 64, ctx: int = 1024, heads=9, kv_heads=3, head_dim=64, block=16):
    """(kernel B/s, torch B/s) of decode attention over a paged cache with shuffled blocks."""
    per_seq = ctx // block
    num_blocks = batch * per_seq
    cache = torch.randn(num_blocks, block, 2, kv_heads, head_dim).to(dtype)
    order = torch.randperm(num_blocks)
    block_ids = order.clone()  # [batch * per_seq], sequence b owns order[b * per_seq:...]
    lens = torch.full((batch,), ctx, dtype=torch.long)
    q = torch.randn(batch, heads, head_dim).to(dtype)
    nbytes = batch * ctx * 2 * kv_heads * head_dim * cache.element_size()
    kernels = CpuKernels.load(dtype, torch.device("cpu"))
    group = DecodeGroup(batch, block_ids, per_seq, lens, None, None)
    kernel_bps = None
    if kernels is not None:
        kernel_bps = nbytes / best_time(lambda: kernels.paged_decode(q, cache, group, head_dim**-0.5), 20)
    from llmserve.backends.torch.attention import build_masks

    mask = build_masks(lens, torch.ones(batch, dtype=torch.long), 1, ctx, None)
    meta = AttentionMetadata(
        torch.zeros(0, dtype=torch.long), DecodeGroup(batch, block_ids, per_seq, lens, mask), None
    )
    torch_bps = nbytes / best_time(lambda: paged_attention(q, cache, meta, head_dim**-0.5), 10)
    return kernel_bps, torch_bps


def use_split(on: bool) -> None:
    runner_module.split_supported = SPLIT if on else (lambda device: False)


def linear_params(model) -> int:
    return sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")
    )


def prefill_flops(cfg, params: int, n: int) -> float:
    return 2 * params * n + 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * n * (n + 1) / 2


def logits_check(runner, prompt: list[int], chunk: int = 512, steps: int = 8) -> tuple[float, bool]:
    """Prefill ``prompt`` in chunks and decode greedily with each path on the same blocks; (max
    |logit difference| over every prompt position, whether the greedy tokens are identical)."""
    table = list(range(-(-(len(prompt) + steps + 1) // runner.block_size)))
    results = []
    for on in (False, True):
        use_split(on)
        logits, tokens, pos = [], list(prompt), 0
        with torch.inference_mode():
            while pos < len(prompt):
                ids = prompt[pos : pos + chunk]
                item = BatchItem(0, ids, pos, table, True, None, (), (), want_prompt_logprobs=True)
                last, prompt_logits = runner.forward(Batch([item], runner.block_size))
                logits.append(prompt_logits[0])
                pos += len(ids)
            tokens.append(int(last[0].argmax()))
            for _ in range(steps - 1):
                item = BatchItem(0, tokens[-1:], len(tokens) - 1, table, True, None, (), ())
                last, _ = runner.forward(Batch([item], runner.block_size))
                tokens.append(int(last[0].argmax()))
        results.append((torch.cat(logits), tokens[len(prompt) :]))
    use_split(True)
    (a, ta), (b, tb) = results
    return float((a - b).abs().max()), ta == tb


def profile_prefill(runner, prompt: list[int], chunk: int = 2048) -> str:
    """torch profiler table of one prefill in engine-sized chunks, straight on the runner."""
    from torch.profiler import profile

    table = list(range(-(-(len(prompt) + 1) // runner.block_size)))
    with profile() as prof:
        for pos in range(0, len(prompt), chunk):
            item = BatchItem(0, prompt[pos : pos + chunk], pos, table, True, None, (), ())
            runner.forward(Batch([item], runner.block_size))
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="2048,7060")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also profile the longest prefill (split)")
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    os.environ.setdefault("LLMSERVE_KV_CACHE_SPACE", "1")
    llm = LLM("smollm2", max_model_len=8192)
    runner = llm.engine.engine.backend.runner
    dtype, cfg = runner.dtype, runner.cfg
    print(f"CPU: {cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads, {dtype}")
    print(f"load average at start: {os.getloadavg()}")
    device = device_thread()  # torch work on the engine's thread: a second OpenMP thread is throttled
    peak = device.run(matmul_peak_flops, dtype)
    bw = device.run(bandwidth)
    print(f"memory bandwidth (torch copy, read + write): {bw / 1e9:.1f} GB/s")
    print(f"matmul peak ({dtype}, 2048x2048): {peak / 1e9:.1f} GFLOP/s")
    kernel_bps, torch_bps = device.run(decode_bandwidth, dtype)
    for name, bps in (("fused C kernel", kernel_bps), ("torch gather + SDPA", torch_bps)):
        if bps is not None:
            print(
                f"decode attention, batch 64, ctx 1024, {name}: {bps / 1e9:.2f} GB/s ({bps / bw:.0%} of copy)"
            )
    diff, same = device.run(logits_check, runner, random_prompts(llm.tokenizer, 1, 1100, seed=3)[0])
    print(f"masked vs split, 1100-token prompt in 512-token chunks: max |logit diff| {diff:.2e}, "
          f"greedy tokens {'identical' if same else 'DIFFERENT'}")  # fmt: skip
    params = linear_params(runner.model)
    one = SamplingParams(max_tokens=1, ignore_eos=True, temperature=0.0)
    llm.generate([[5, 6, 7]], one)  # warm-up
    prompts = {n: random_prompts(llm.tokenizer, 1, n, seed=n)[0] for n in lengths}
    best, first, cached = {}, {}, {}
    for _ in range(args.rounds):
        for n in lengths:
            peak = max(peak, device.run(matmul_peak_flops, dtype))  # the quietest moment, as the times
            for name in ("masked", "split"):
                use_split(name == "split")
                llm.engine.engine.reset_prefix_cache()
                start = time.perf_counter()
                out = llm.generate([prompts[n]], one)
                seconds = time.perf_counter() - start
                best[name, n] = min(best.get((name, n), float("inf")), seconds)
                first[name, n] = out[0].outputs[0].token_ids[0]
            start = time.perf_counter()
            llm.generate([prompts[n]], one)  # again: its prefix blocks are cached now
            cached[n] = min(cached.get(n, float("inf")), time.perf_counter() - start)
    use_split(True)
    print(
        f"\nlinear params {params / 1e6:.1f} M; best matmul peak {peak / 1e9:.1f} GFLOP/s; best of {args.rounds}\n"
    )
    print("| prompt | path | TTFT | GFLOP/s (linear + causal attention) | of matmul peak | first token |")
    print("|---|---|---|---|---|---|")
    for n in lengths:
        for name in ("masked", "split"):
            s = best[name, n]
            rate = prefill_flops(cfg, params, n) / s
            print(f"| {n} | {name} | {s:.2f} s | {rate / 1e9:.1f} | {rate / peak:.0%} | {first[name, n]} |")
    for n in lengths:
        print(f"TTFT of the {n}-token prompt again, its prefix cached (split): {cached[n]:.2f} s")
    print(f"load average at end: {os.getloadavg()}")
    if args.profile:
        print(device.run(profile_prefill, runner, prompts[max(lengths)]))
    llm.close()


if __name__ == "__main__":
    main()
