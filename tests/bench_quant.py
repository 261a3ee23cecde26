"""Weight-only quantisation of SmolLM2 on CPU: float32 vs int8 vs int4 vs gguf, in one run (not a test).

    PYTHONPATH=src:tests python tests/bench_quant.py [--rss] [--mixed] [--qwen]

Greedy agreement with the float model, perplexity on a fixed text (our runner's prompt logits),
linear-weight bytes, decode ms per step at batch 1 and tok/s at batch 32 (runner steps, argmax
sampling; the variants alternate and the best round is kept, as the machine is shared). With
``--rss`` it also starts the real server once per variant and reads its RSS after one request;
with ``--profile`` it splits a batch-1 decode step of int8 and int4 into decoder layers and LM
head, for each of the changes that took it from the module path with float activations and a
float head to the fused C step (decode_step.py); with ``--mixed`` it also compares a GGUF re-quantised to Q8_0 / Q4_0 / Q4_1 / Q4_K (tests/gguf_blocks.py)
with its own float32 conversion; with ``--qwen``, the Qwen2.5-Coder pack's Q4_K_M GGUF likewise.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time

import torch

from llmserve.backends.base import Batch, BatchItem
from llmserve.backends.torch.quant_linear import QuantLinear
from llmserve.backends.torch.runner import TorchModelRunner
from llmserve.sources import packs

# gguf: the pack's own Q4_1 blocks (the float32 model is their dequantisation)
VARIANTS = (("float32", None), ("int8", "int8"), ("int4 g32", "int4"), ("gguf Q4_1", "gguf"))
PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences what a hash table is.",
    "List three prime numbers and say why they are prime.",
)
TEXT = (
    "The history of the bicycle begins in the early nineteenth century, when inventors in Europe "
    "experimented with two-wheeled machines pushed along by the rider's feet. Pedals attached to the "
    "front wheel came later, and the safety bicycle, with a chain driving the rear wheel and two wheels "
    "of equal size, made cycling popular in the 1890s. Pneumatic tyres, gears and lighter frames "
    "followed, and today bicycles are used for transport, sport and recreation around the world."
)
BLOCK, STEPS, BATCH = 16, 32, 32


def cpu_line() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor()
    model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln for ln in out.splitlines() if ln.startswith("Flags")), "")
    return f"{model}; AMX: {'yes' if 'amx_tile' in flags else 'no'}; AVX-512: {'yes' if 'avx512f' in flags else 'no'}"


class Seqs:
    """A few sequences on the runner's KV cache, stepped greedily."""

    def __init__(self, runner: TorchModelRunner, prompts: list[list[int]], max_new: int) -> None:
        self.runner = runner
        per = -(-(max(map(len, prompts)) + max_new + 1) // BLOCK)
        self.tables = [list(range(i * per, (i + 1) * per)) for i in range(len(prompts))]
        self.tokens = [list(p) for p in prompts]
        self.pos = [0] * len(prompts)

    def step(self, want_prompt: bool = False):
        items = [
            BatchItem(i, t[p:], p, self.tables[i], True, None, (), (), want_prompt_logprobs=want_prompt)
            for i, (t, p) in enumerate(zip(self.tokens, self.pos, strict=True))
        ]
        logits, prompt = self.runner.forward(Batch(items, BLOCK))
        for i, row in enumerate(logits.argmax(-1).tolist()):
            self.pos[i] = len(self.tokens[i])
            self.tokens[i].append(row)
        return prompt


def load(model_dir: str, quant: str | None) -> TorchModelRunner:
    runner = TorchModelRunner(model_dir, "float32", quantization=quant, group_size=32)
    runner.load()
    runner.allocate_kv_cache(BATCH * 24 + 64, BLOCK)
    return runner


def greedy(runner, prompts: list[list[int]]) -> list[list[int]]:
    seqs = Seqs(runner, prompts, STEPS)
    for _ in range(STEPS):
        seqs.step()
    return [t[len(p) :] for t, p in zip(seqs.tokens, prompts, strict=True)]


def perplexity(runner, ids: list[int]) -> float:
    prompt = Seqs(runner, [ids], 1).step(want_prompt=True)[0]  # logits at every prompt position
    logprobs = torch.log_softmax(prompt[:-1].double(), -1)
    nll = -logprobs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean().item()
    return math.exp(nll)


def step_time(runner, prompt: list[int], batch: int, steps: int = 16) -> float:
    seqs = Seqs(runner, [prompt] * batch, steps + 1)
    seqs.step()  # prefill
    start = time.perf_counter()
    for _ in range(steps):
        seqs.step()
    return (time.perf_counter() - start) / steps


def server_rss(quant: str | None) -> float:
    """GiB RSS of a real server after one chat request."""
    from conftest import ServerProcess  # tests/ on PYTHONPATH

    args = ["smollm2", "--embedding-model", "none", "--max-model-len", "1024", "--dtype", "float32"]
    if quant:
        args += ["--quantization", quant]
    server = ServerProcess(*args)
    try:
        body = {
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 16,
        }
        with server.http(timeout=120) as http:
            http.post("/v1/chat/completions", json=body).raise_for_status()
        status = open(f"/proc/{server.proc.pid}/status").read()
        kb = next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS"))
    finally:
        server.stop()
    return kb / 2**20


def head_bytes(model) -> int:
    """Bytes of the LM head (quantised under every --quantization method; float otherwise)."""
    head = model.lm_head
    if isinstance(head, QuantLinear):
        return head.weight_bytes()
    return head.weight.numel() * head.weight.element_size()


def weight_bytes(model) -> tuple[int, int]:
    """(bytes of the decoder's linear weights, bytes of every other parameter, tied ones once)."""
    linear = sum(
        m.weight_bytes() if isinstance(m, QuantLinear) else m.weight.numel() * m.weight.element_size()
        for name, m in model.named_modules()
        if isinstance(m, (QuantLinear, torch.nn.Linear)) and not name.endswith("lm_head")
    )
    rest = sum(
        p.numel() * p.element_size()
        for name, p in model.named_parameters()
        if not (name.endswith("proj.weight") or name.endswith("proj.bias"))
    )
    return linear, rest


def table(runners: dict, prompts: list[list[int]], text_ids: list[int], timed: bool = False) -> None:
    """One markdown row per runner: weight bytes, greedy agreement with "float32", perplexity
    (and, when ``timed``, the best decode step times over ROUNDS alternating rounds)."""
    outputs = {name: greedy(r, prompts) for name, r in runners.items()}
    ref = outputs["float32"]
    best1 = dict.fromkeys(runners, math.inf)
    best32 = dict.fromkeys(runners, math.inf)
    for _ in range(int(os.environ.get("ROUNDS", "5")) if timed else 0):  # keep each one's best
        for name, r in runners.items():
            best1[name] = min(best1[name], step_time(r, prompts[0], 1, 32))
            best32[name] = min(best32[name], step_time(r, prompts[0], BATCH, 8))
    print(f"\n{len(PROMPTS)} prompts, {STEPS} greedy tokens each; perplexity on {len(text_ids)} tokens\n")
    print(
        "| weights | linear weights | LM head | other float weights | first tokens = float32 | identical tokens "
        "| perplexity | decode ms/token, batch 1 | tok/s, batch 32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in runners.items():
        linear, other = weight_bytes(r.model)
        prefix = [
            next((i for i, (a, b) in enumerate(zip(o, f, strict=False)) if a != b), STEPS)
            for o, f in zip(outputs[name], ref, strict=False)
        ]
        same = sum(
            a == b for o, f in zip(outputs[name], ref, strict=False) for a, b in zip(o, f, strict=False)
        )
        print(
            f"| {name} | {linear / 2**20:.1f} MiB | {head_bytes(r.model) / 2**20:.1f} MiB | {other / 2**20:.1f} MiB "
            f"| {'/'.join(map(str, prefix))} "
            f"| {same}/{len(PROMPTS) * STEPS} | {perplexity(r, text_ids):.3f} "
            + (f"| {best1[name] * 1e3:.1f} | {BATCH / best32[name]:.0f} |" if timed else "| - | - |")
        )


STAGES = (
    "float activations, float32 head, module path",
    "+ int8 LM head",
    "+ int8 activations (integer kernels)",
    "+ fused C decode step",
)


def _stage(runner, stage: int, fused, head) -> None:
    """Put ``runner`` in the state of STAGES[stage]."""
    model = runner.model
    for m in model.model.layers.modules():
        if isinstance(m, QuantLinear):
            m.int8_activations = stage >= 2 and m.in_features % 32 == 0
    if stage == 0:  # the float head the quantised models had before (the dequantised codes)
        linear = torch.nn.Linear(head.in_features, head.out_features, bias=False)
        linear.weight.data = head.dequantize()
        model.lm_head = linear
    else:
        model.lm_head = head
    model.fused_decode = fused if stage == 3 else None


def profile(model_dir: str, prompt: list[int], steps: int = 32) -> None:
    """Batch-1 decode step split into decoder layers and head, per STAGES (best of ROUNDS)."""
    print("\n| weights | stage | step ms | step without LM head ms | LM head ms | tok/s |")
    print("|---|---|---|---|---|---|")
    for name, quant in VARIANTS[1:3]:
        runner = load(model_dir, quant)
        fused, head = runner.model.fused_decode, runner.model.lm_head
        for stage, label in enumerate(STAGES):
            _stage(runner, stage, fused, head)
            best = (math.inf, 0.0, 0.0)
            for _ in range(int(os.environ.get("ROUNDS", "5"))):
                seqs, split = Seqs(runner, [prompt], steps + 1), [0.0, 0.0]
                seqs.step()
                model, head_fn = runner.model, runner.model.compute_logits

                def timed_logits(hidden, _fn=head_fn, _split=split):
                    start = time.perf_counter()
                    out = _fn(hidden)
                    _split[1] += time.perf_counter() - start
                    return out

                model.compute_logits = timed_logits
                start = time.perf_counter()
                for _ in range(steps):
                    seqs.step()
                total = (time.perf_counter() - start) / steps
                del model.compute_logits
                if total < best[0]:
                    best = (total, total - split[1] / steps, split[1] / steps)
            step, layers, head_ms = (t * 1e3 for t in best)
            print(f"| {name} | {label} | {step:.1f} | {layers:.1f} | {head_ms:.1f} | {1e3 / step:.0f} |")
        _stage(runner, 3, fused, head)


def tokenized(model_dir: str) -> tuple[list[list[int]], list[int]]:
    """(the chat prompts, the perplexity text) in the model's own tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    chat = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in PROMPTS
    ]
    return [tok(c)["input_ids"] for c in chat], tok(TEXT)["input_ids"]


def main() -> None:
    model_dir = str(packs.ensure_model("smollm2"))
    prompts, text_ids = tokenized(model_dir)
    print(f"CPU: {cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    runners = {name: load(model_dir, quant) for name, quant in VARIANTS}
    table(runners, prompts, text_ids, timed=True)
    if "--profile" in sys.argv:
        del runners
        profile(model_dir, prompts[0])
    if "--mixed" in sys.argv:  # a GGUF of Q8_0 / Q4_0 / Q4_1 / Q4_K / F16 tensors, against its float32
        import tempfile
        from pathlib import Path

        from gguf_blocks import write_mixed_gguf

        from llmserve.sources.gguf import convert_gguf_to_hf

        with tempfile.TemporaryDirectory() as tmp:
            source = write_mixed_gguf(packs.ensure_gguf("smollm2"), Path(tmp) / "mixed.gguf")
            mixed = str(convert_gguf_to_hf(source, Path(tmp) / "mixed"))
            table({"float32": load(mixed, None), "gguf mixed": load(mixed, "gguf")}, prompts, text_ids)
    if "--qwen" in sys.argv:  # the Qwen2.5-Coder pack's Q4_K_M GGUF (Q4_K, Q5_0, Q6_K, Q8_0)
        qwen = str(packs.ensure_model("qwen2.5-coder-0.5b"))
        packs.ensure_gguf("qwen2.5-coder-0.5b")
        table({"float32": load(qwen, None), "gguf Q4_K_M": load(qwen, "gguf")}, *tokenized(qwen))
    if "--rss" in sys.argv:
        del runners
        for name, quant in VARIANTS:
            print(f"server RSS after one request, {name}: {server_rss(quant):.2f} GiB")


if __name__ == "__main__":
    main()
