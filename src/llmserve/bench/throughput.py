"""Offline engine benchmarks: throughput against transformers, single stream, prefix caching."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass


@dataclass
class Result:
    name: str
    requests: int
    output_tokens: int
    seconds: float

    @property
    def tok_s(self) -> float:
        return self.output_tokens / self.seconds


def cpu_summary() -> str:
    """The CPU model and whether it has AMX (results are comparable only on the same kind)."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return "unknown CPU"
    model = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?"
    )
    return f"{model}, AMX {'yes' if ' amx_tile' in info else 'no'}"


def random_prompts(tokenizer, num: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(min(len(tokenizer), 40000)) if i not in special]
    return [[rng.choice(vocab) for _ in range(length)] for _ in range(num)]


def run_llmserve(llm, prompts: list[list[int]], output_len: int) -> Result:
    from llmserve.engine.sampling import SamplingParams

    params = SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=0.0)
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return Result("llmserve", len(prompts), tokens, seconds)


def run_transformers(
    model_dir: str, prompts: list[list[int]], output_len: int, batch_size: int, dtype
) -> Result:
    """transformers generate with static batches (equal-length prompts, so no padding)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    kwargs = dict(max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        model.generate(torch.tensor(prompts[:1]), max_new_tokens=4, do_sample=False, pad_token_id=0)
        start = time.perf_counter()
        tokens = 0
        for i in range(0, len(prompts), batch_size):
            batch = torch.tensor(prompts[i : i + batch_size])
            out = model.generate(batch, **kwargs)
            tokens += (out.shape[1] - batch.shape[1]) * batch.shape[0]
        seconds = time.perf_counter() - start
    return Result(f"transformers generate (batch {batch_size})", len(prompts), tokens, seconds)


def matmul_peak_flops(dtype, size: int = 2048, repeat: int = 10) -> float:
    """Measured FLOP/s of a square matmul: the machine's practical roofline for this dtype."""
    import torch

    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeat):
        torch.mm(a, b)
    return 2 * size**3 * repeat / (time.perf_counter() - start)


def count_params(model_dir: str) -> int:
    from safetensors import safe_open

    from llmserve.sources.weights import safetensors_files

    total = 0
    for path in safetensors_files(model_dir):
        with safe_open(str(path), "pt") as f:
            for name in f.keys():
                shape = f.get_slice(name).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
    return total


def prefix_ttft(llm, tokenizer, prefix_len: int, suffix_len: int = 16) -> tuple[float, float]:
    """Time to first token of a request, then of a second one sharing its prefix."""
    from llmserve.engine.sampling import SamplingParams

    prefix = random_prompts(tokenizer, 1, prefix_len, seed=1)[0]
    first, second = random_prompts(tokenizer, 2, suffix_len, seed=2)
    params = SamplingParams(max_tokens=1, ignore_eos=True, temperature=0.0)
    llm.generate([[5, 6, 7]], params)  # warm-up
    times = []
    for suffix in (first, second):
        start = time.perf_counter()
        llm.generate([prefix + suffix], params)
        times.append(time.perf_counter() - start)
    return times[0], times[1]


# A JSON schema no sequence can finish within a benchmark's output length: every row stays
# constrained (and the batch full) for the whole run, like the unconstrained run it is compared to.
BENCH_SCHEMA = {
    "type": "object",
    "properties": {"items": {"type": "array", "items": {"type": "string"}, "minItems": 256}},
    "required": ["items"],
}


def run_structured(
    llm, prompts: list[list[int]], output_len: int, kind: str, rounds: int = 3
) -> tuple[Result, Result]:
    """The same workload unconstrained and under a grammar, alternated ``rounds`` times in one
    run (the machine is shared: the best round of each is kept). Returns (plain, constrained)."""
    from llmserve.engine.sampling import SamplingParams
    from llmserve.structured import StructuredOutputCompiler, StructuredOutputs

    if kind != "json":
        raise ValueError(f"--structured {kind!r}: only 'json' is measured")
    info = llm.engine.model_info
    compiler = StructuredOutputCompiler(
        llm.tokenizer, info.vocab_size, info.eos_token_ids, backend="xgrammar"
    )
    spec = compiler.compile_now(StructuredOutputs(json=BENCH_SCHEMA))
    plain = SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=0.0)
    constrained = SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=0.0, constraint=spec)
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, ignore_eos=True, constraint=spec))  # warm-up
    best: dict[str, Result] = {}
    for _ in range(rounds):
        for name, params in (("unconstrained", plain), (f"structured {kind}", constrained)):
            start = time.perf_counter()
            outputs = llm.generate(prompts, params)
            seconds = time.perf_counter() - start
            tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
            result = Result(name, len(prompts), tokens, seconds)
            if name not in best or result.tok_s > best[name].tok_s:
                best[name] = result
    return best["unconstrained"], best[f"structured {kind}"]
