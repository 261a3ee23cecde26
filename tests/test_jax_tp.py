"""Tensor parallelism on 2 CPU devices (XLA_FLAGS in a subprocess): the same greedy tokens as
one device, with attention split when the heads divide and replicated when they do not."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import transformers

pytest.importorskip("jax")

SCRIPT = r"""
import json, sys
import jax
from llmserve import LLM, SamplingParams

assert len(jax.devices()) == 2, jax.devices()
prompts = [[1, 504, 345, 314, 260], [1, 28, 7, 99, 400, 12, 5, 8, 3, 70, 71, 72], [9, 8]]
out = {}
for model in sys.argv[1:]:
    for tp in (1, 2):
        llm = LLM(model, backend="jax", dtype="float32", tensor_parallel_size=tp, max_num_seqs=4,
                  max_num_batched_tokens=64, kv_cache_space=0.05, max_model_len=256, enforce_eager=True)
        runner = llm.engine.engine.backend.runner
        params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
        tokens = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
        plan = runner.plan
        out[f"{model} {tp}"] = {"tokens": tokens, "attention": plan.attention, "mlp": plan.mlp,
                                "cache": str(runner.caches[0][0].sharding.spec), "devices": runner.mesh.devices.size}
print("RESULT " + json.dumps(out))
"""


def tiny_model(path, smollm2_dir, **config) -> str:
    """A random tiny Llama with SmolLM2's tokenizer files (the engine needs a tokenizer)."""
    import torch

    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=512)
    cfg = transformers.LlamaConfig(**{**base, "max_position_embeddings": 256, **config})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2_dir / name, path / name)
    return str(path)


def run_tp(*model_dirs: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *model_dirs], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_tp2_gives_the_same_greedy_tokens_as_one_device(tmp_path, smollm2_dir):
    # 4 / 2 heads split over 2 devices; 9 / 3 heads (SmolLM2's shape) do not: attention and its
    # KV cache are replicated and only the MLP is split.
    split = tiny_model(tmp_path / "split", smollm2_dir, num_attention_heads=4, num_key_value_heads=2)
    replicated = tiny_model(
        tmp_path / "replicated", smollm2_dir, num_attention_heads=9, num_key_value_heads=3, hidden_size=72
    )
    out = run_tp(split, replicated)
    for model_dir, attention_split in ((split, True), (replicated, False)):
        one, two = out[f"{model_dir} 1"], out[f"{model_dir} 2"]
        assert two["devices"] == 2 and one["devices"] == 1
        assert two["tokens"] == one["tokens"]
        assert all(len(t) == 24 for t in two["tokens"])
        assert two["attention"] is attention_split and two["mlp"] is True
        assert ("'tp'" in two["cache"]) is attention_split  # KV cache split by KV heads
