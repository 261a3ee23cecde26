"""Stage ``model``: a SmolLM2-135M-shaped Llama with random weights through the engine on cuda
(eager and with CUDA graphs, float32 and bfloat16) and on cpu: the same greedy tokens.

The real weights are too big to carry, so the model is SmolLM2's config with seeded random
weights (the embedding, which is also the LM head, scaled up so the logits are decisive: top-2
gaps of ~0.5 instead of ~0.1). Prompts are token ids. Random weights still make near-ties, so a
run may leave the reference's tokens where the reference's own top-2 logprobs are within a
tolerance; anywhere else a different token is a mismatch. Before the first difference the
chosen tokens' logprobs must agree within a tolerance too.

Also here: the model directory and the engine functions the speed stage uses.
"""

from __future__ import annotations

import gc
import json
import random
import shutil
import time
from pathlib import Path

import torch

SMOLLM2 = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    head_dim=64, vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
    tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
)  # fmt: skip
TINY = dict(SMOLLM2, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=2048)  # fmt: skip
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def model_dir(ctx) -> Path:
    """The random model's directory (made once per run, shared by the stages), with the tokenizer's
    files copied in when ``--tokenizer`` gave them."""
    path = ctx.work / ("model-tiny" if ctx.quick else "model-smollm2")
    if (path / "config.json").exists():
        return path
    import transformers

    start = time.monotonic()
    config = transformers.LlamaConfig(**(TINY if ctx.quick else SMOLLM2))
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(5.0)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(tmp)
    if ctx.tokenizer is not None:
        for name in TOKENIZER_FILES:
            if (ctx.tokenizer / name).exists():
                shutil.copy(ctx.tokenizer / name, tmp / name)
    tmp.rename(path)
    print(f"random model written to {path} in {time.monotonic() - start:.1f} s", flush=True)
    return path


def has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer.json").exists()


def make_engine(path: Path, backend: str, dtype: str, **settings):
    """(backend, engine) for the model at ``path``; ``close`` them when done."""
    from llmserve.backends.torch.backend import CpuBackend, CudaBackend
    from llmserve.config import build_config
    from llmserve.engine.engine import LLMEngine

    settings = dict(dict(kv_cache_space=1, embedding_model="none"), **settings)
    config = build_config(model=str(path), backend=backend, dtype=dtype, **settings)
    obj = (CudaBackend if backend == "cuda" else CpuBackend)(config)
    try:
        return obj, LLMEngine(obj, str(path), config)
    except BaseException:
        obj.shutdown()
        raise


def close(backend) -> None:
    """Shut the backend down and give its device memory back now (the next engine in this
    process profiles the free memory: a cache still held would shrink its KV budget to nothing)."""
    backend.shutdown()
    runner = backend.runner
    if runner is not None:
        runner.graphs, runner.kv_caches, runner.model = None, [], None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def prompts(num: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(length)] for _ in range(num)]


def greedy(engine, prompt_ids: list[list[int]], max_tokens: int) -> list[list[tuple]]:
    """Per prompt, (token, logprob, [(token, logprob) of the top 2]) per output step, batched."""
    from llmserve.engine.sampling import SamplingParams

    for i, ids in enumerate(prompt_ids):
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, logprobs=2)
        engine.add_request(f"g{i}", ids, params)
    out: dict[str, list] = {f"g{i}": [] for i in range(len(prompt_ids))}
    while engine.has_work():
        for ev in engine.step():
            if ev.token_id is not None:
                chosen, top = ev.logprobs
                out[ev.request_id].append(
                    (ev.token_id, chosen.logprob, [(t.token_id, t.logprob) for t in top])
                )
    return [out[f"g{i}"] for i in range(len(prompt_ids))]


def compare(
    ref: list[list[tuple]], run: list[list[tuple]], logprob_tol: float | None, tie_tol: float
) -> dict:
    """Token equality with near-ties allowed: per prompt, the first differing position, the
    reference's top-2 gap there, and the largest logprob difference before it (checked against
    ``logprob_tol`` unless it is None)."""
    per_prompt, worst, ok = [], 0.0, True
    for a, b in zip(ref, run, strict=True):
        first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x[0] != y[0]), None)
        if first is None and len(a) != len(b):
            first = min(len(a), len(b))
        upto = len(a) if first is None else first
        diff = max((abs(a[i][1] - b[i][1]) for i in range(upto)), default=0.0)
        worst = max(worst, diff)
        entry = {"tokens": len(a), "first_difference": first, "max_logprob_diff": round(diff, 6)}
        if first is not None and first < min(len(a), len(b)):
            top = a[first][2]
            gap = top[0][1] - top[1][1] if len(top) > 1 else 1e9
            entry["ref_top2_gap"] = round(gap, 6)
            entry["near_tie"] = gap <= tie_tol
            ok &= entry["near_tie"]
        elif first is not None:
            ok = False  # a run produced fewer tokens
        per_prompt.append(entry)
    ok &= logprob_tol is None or worst <= logprob_tol
    return {"ok": ok, "equal": all(e["first_difference"] is None for e in per_prompt), "max_logprob_diff": worst,
            "logprob_tol": logprob_tol, "tie_tol": tie_tol, "prompts": per_prompt}  # fmt: skip


def _run(path, backend, dtype, ids, max_tokens, **settings) -> dict:
    start = time.monotonic()
    obj, engine = make_engine(path, backend, dtype, **settings)
    try:
        runner, replays = obj.runner, [0]
        if runner.graphs is not None:
            graphs, run = runner.graphs, runner.graphs.run

            def counted(items):
                replays[0] += 1
                return run(items)

            graphs.run = counted
        tokens = greedy(engine, ids, max_tokens)
        free = engine.blocks.num_free_blocks
        return {"tokens": tokens, "graph_replays": replays[0], "steps": engine.num_steps,
                "blocks_leaked": engine.num_blocks - free, "seconds": round(time.monotonic() - start, 1),
                "graph_sizes": list(runner.graphs.graphs) if runner.graphs is not None else []}  # fmt: skip
    finally:
        close(obj)


def stage_model(ctx) -> None:
    path = model_dir(ctx)
    cfg = json.loads((path / "config.json").read_text())
    lengths, max_tokens = ([5, 37, 150, 301], 24) if not ctx.quick else ([5, 19], 6)
    ids = [prompts(1, n, cfg["vocab_size"], seed=n)[0] for n in lengths]
    # Chunked prefills mixed with decodes in one step (64-token budget), as a busy server does.
    common = dict(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=1024, block_size=16)
    cuda = dict(common, gpu_memory_utilization=0.3)
    runs = {"cpu-float32": ("cpu", "float32", dict(common, enforce_eager=True))}
    if ctx.device == "cuda":
        for dtype in ("float32", "bfloat16"):
            runs[f"cuda-{dtype}-eager"] = ("cuda", dtype, dict(cuda, enforce_eager=True))
            runs[f"cuda-{dtype}-graphs"] = ("cuda", dtype, dict(cuda, enforce_eager=False))
    else:  # the dry run: the same comparisons between cpu runs (another step budget: other chunks)
        runs["cpu-float32-chunk16"] = ("cpu", "float32", dict(common, max_num_batched_tokens=16))
    results = {}
    for name, (backend, dtype, settings) in runs.items():
        res = ctx.attempt(f"run-{name}", _run, path, backend, dtype, ids, max_tokens, **settings)
        if res is not None:
            results[name] = res
            ctx.record(f"run-{name}", {k: v for k, v in res.items() if k != "tokens"})
    # (reference, run, logprob tolerance, near-tie tolerance); bf16 against fp32 is reported only.
    pairs = [("cpu-float32", "cuda-float32-eager", 2e-3, 1e-2), ("cuda-float32-eager", "cuda-float32-graphs", 2e-3, 1e-2),
             ("cuda-bfloat16-eager", "cuda-bfloat16-graphs", 0.2, 0.2), ("cpu-float32", "cuda-bfloat16-eager", None, 0.3),
             ("cpu-float32", "cpu-float32-chunk16", 2e-3, 1e-2)]  # fmt: skip
    for ref, run, tol, tie in pairs:
        if ref in results and run in results:
            res = compare(results[ref]["tokens"], results[run]["tokens"], tol, tie)
            if tol is None:
                ctx.record(f"{run}-vs-{ref} (report only)", res)
            else:
                ctx.check(f"{run}-vs-{ref}", lambda r=res: r if r["ok"] else _fail(r))
    for name, res in results.items():
        if res["blocks_leaked"]:
            ctx.check(f"{name}-blocks-freed", _fail, f"{res['blocks_leaked']} KV blocks still held")
        if name.endswith("-graphs") and not res["graph_replays"]:
            ctx.check(f"{name}-graphs-used", _fail, "no decode step replayed a CUDA graph")


def _fail(detail):
    raise AssertionError(json.dumps(detail, default=str)[:1500])
