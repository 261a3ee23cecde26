"""Tensor parallelism on CPU (gloo, 2 ranks): the same greedy tokens and logprobs as one rank,
whether attention and the MLP are split or replicated (SmolLM2's 9 heads do not split), and no
worker left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import transformers

from llmserve.backends.torch.backend import CpuBackend
from llmserve.config import build_config
from llmserve.engine.engine import LLMEngine
from llmserve.engine.sampling import SamplingParams

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=128,
)
# Case -> (config overrides, KV heads in each rank's cache at 2 ranks).
CASES = {
    "gqa": (dict(num_key_value_heads=2, vocab_size=512), 1),
    # One KV head on two ranks (replicated), every bias, tied embeddings, a vocabulary that
    # does not split evenly (padded on the last rank).
    "replicated-kv": (
        dict(
            num_key_value_heads=1,
            vocab_size=509,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=True,
        ),
        1,
    ),
    # 3 heads and an odd intermediate size: attention and the MLP are whole on both ranks, only
    # the embedding and LM head are split.
    "replicated-attention-and-mlp": (
        dict(
            hidden_size=48,
            num_attention_heads=3,
            num_key_value_heads=3,
            intermediate_size=97,
            vocab_size=512,
            attention_bias=True,
        ),
        3,
    ),
}
PROMPTS = [[5, 9, 200, 17, 3], list(range(30, 53)), [7] * 3 + list(range(100, 137))]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict:
    """Case name -> (directory of a random tiny Llama, its transformers config)."""
    models = {}
    for name, (extra, _) in CASES.items():
        config = transformers.LlamaConfig(**{**TINY, **extra})
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config).eval()
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.05)  # biases and norms matter too
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        models[name] = (path, config)
    return models


def make_backend(model_dir, tp: int, **overrides) -> tuple[CpuBackend, LLMEngine]:
    # A 16-token step budget: chunked prefills mixed with decodes in one step.
    settings = dict(max_num_batched_tokens=16, block_size=4, kv_cache_space=0.002) | overrides
    config = build_config(
        model=str(model_dir), backend="cpu", dtype="float32", tensor_parallel_size=tp, **settings
    )
    backend = CpuBackend(config)
    try:
        return backend, LLMEngine(backend, str(model_dir), config)
    except BaseException:
        backend.shutdown()
        raise


def generate(
    engine: LLMEngine, prompts: list[list[int]] = PROMPTS, max_tokens: int = 6
) -> dict[str, list[tuple[int, float]]]:
    """Greedy (token, logprob) lists per request, the prompts batched together."""
    for i, prompt in enumerate(prompts):
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, logprobs=1)
        engine.add_request(f"r{i}", prompt, params)
    out: dict[str, list[tuple[int, float]]] = {f"r{i}": [] for i in range(len(prompts))}
    while engine.has_work():
        for event in engine.step():
            if event.token_id is not None:
                out[event.request_id].append((event.token_id, event.logprobs[0].logprob))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_match_one(tiny_models, case):
    path, _ = tiny_models[case]
    _, engine = make_backend(path, 1)
    reference = generate(engine)
    backend, engine = make_backend(path, 2)
    try:
        workers = list(backend.tp.procs)
        assert len(workers) == 1 and workers[0].poll() is None
        # KV heads are split, or replicated with attention: the cache is per rank.
        assert engine.model_info.num_kv_heads == CASES[case][1]
        sharded = generate(engine)
        free_blocks = engine.blocks.num_free_blocks
    finally:
        backend.shutdown()
    tokens = {key: [t for t, _ in pairs] for key, pairs in sharded.items()}
    assert tokens == {key: [t for t, _ in pairs] for key, pairs in reference.items()}
    assert all(len(pairs) == 6 for pairs in sharded.values())
    for key, pairs in reference.items():
        torch.testing.assert_close(
            [lp for _, lp in sharded[key]], [lp for _, lp in pairs], atol=1e-4, rtol=1e-4
        )
    assert free_blocks == engine.num_blocks  # every block came back
    assert workers[0].wait(5) == 0  # shutdown stops the worker cleanly


def test_smollm2_with_unsplittable_heads_matches_one_rank(smollm2_dir, tok):
    # 9 attention heads and 3 KV heads do not split over 2 ranks: attention and its KV cache are
    # whole on both ranks, the MLP and the vocabulary are split.
    prompts = [tok.encode("The capital of France is"), tok.encode("def fibonacci(n):\n    ")]
    settings = dict(kv_cache_space=0.05, max_model_len=256)
    _, engine = make_backend(smollm2_dir, 1, **settings)
    reference, reference_blocks = generate(engine, prompts, 24), engine.num_blocks
    backend, engine = make_backend(smollm2_dir, 2, **settings)
    try:
        # Every rank holds all 3 KV heads, so the per-rank budget buys the same blocks as 1 rank.
        assert engine.model_info.num_kv_heads == 3
        assert engine.num_blocks == reference_blocks
        sharded = generate(engine, prompts, 24)
        free_blocks = engine.blocks.num_free_blocks
    finally:
        backend.shutdown()
    assert {k: [t for t, _ in v] for k, v in sharded.items()} == {
        k: [t for t, _ in v] for k, v in reference.items()
    }
    assert all(len(pairs) == 24 for pairs in sharded.values())
    for key, pairs in reference.items():
        torch.testing.assert_close(
            [lp for _, lp in sharded[key]], [lp for _, lp in pairs], atol=2e-3, rtol=2e-3
        )
    assert free_blocks == engine.num_blocks


def _state(pid: int) -> str | None:
    """The process state letter, or None when it is gone (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if state in "ZX" else state


def test_workers_exit_when_the_main_process_is_killed(tiny_models):
    path, _ = tiny_models["gqa"]
    script = textwrap.dedent(
        f"""
        import os, signal
        from llmserve.backends.torch.backend import CpuBackend
        from llmserve.config import build_config

        config = build_config(model={str(path)!r}, backend="cpu", dtype="float32", tensor_parallel_size=2)
        backend = CpuBackend(config)
        backend.load_model({str(path)!r})
        print(backend.tp.rendezvous_dir, *(proc.pid for proc in backend.tp.procs), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no shutdown: the workers must notice
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    rendezvous_dir, *pids = proc.stdout.split()
    shutil.rmtree(rendezvous_dir, ignore_errors=True)  # rank 0 had no chance to
    pids = [int(pid) for pid in pids]
    assert len(pids) == 1
    deadline = time.monotonic() + 15
    while any(_state(pid) is not None for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in pids if _state(pid) is not None]
    for pid in left:
        os.kill(pid, 9)
    assert not left, "tensor-parallel worker outlived the main process"
