"""JAX models vs the torch backend, logit for logit (float32): full prefill, chunked prefill over
paged KV, decodes mixed with prefill chunks, prompt logits; BERT embeddings; bounded compiles."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch
from test_model_parity import BLOCK, TINY_CONFIGS, make_tiny, sequences

from llmserve.arch.registry import UnsupportedModelError
from llmserve.backends.base import Batch, BatchItem
from llmserve.backends.torch.runner import TorchModelRunner
from llmserve.engine.sampling import SamplingParams

pytest.importorskip("jax")

from llmserve.backends.jax.layout import step_key  # noqa: E402
from llmserve.backends.jax.runner import JaxModelRunner  # noqa: E402


def jax_forward(runner: JaxModelRunner, batch: Batch) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """({item: last-token logits}, {item: logits of every new token}) as numpy."""
    last, every = {}, {}
    for part in runner.forward(batch):
        logits = np.asarray(part.logits)
        for i, row in part.layout.sample_row.items():
            last[i] = logits[row]
            first = part.layout.token_rows[i]
            rows = np.arange(first, first + len(batch.items[i].token_ids), dtype=np.int32)
            every[i] = np.asarray(runner.logits_of_rows(part.hidden, rows))
    return last, every


def close(ours: np.ndarray, ref: torch.Tensor) -> None:
    ref = ref.numpy()
    scale = max(float(np.abs(ref).max()), 1.0)
    np.testing.assert_allclose(ours, ref, atol=1e-4 * scale, rtol=1e-4)


def check_steps(torch_runner, jax_runner, seqs, steps) -> None:
    """Run each step on both runners (same items) and compare every logit they return."""
    for step in steps:
        items = [seqs[i].item(n) for i, n in step]
        ref_last, ref_prompt = torch_runner.forward(Batch(items, block_size=BLOCK))
        last, every = jax_forward(jax_runner, Batch(items, block_size=BLOCK))
        assert sorted(last) == list(range(len(items)))
        for k in range(len(items)):
            close(last[k], ref_last[k])
            close(every[k], ref_prompt[k])


def runners(path, num_blocks: int, **kwargs) -> tuple[TorchModelRunner, JaxModelRunner]:
    ref = TorchModelRunner(str(path), "float32")
    ref.load()
    ref.allocate_kv_cache(num_blocks, BLOCK)
    ours = JaxModelRunner(str(path), "float32", warmup=False, **kwargs)
    info = ours.load()
    assert info.dtype == "float32"
    ours.allocate_kv_cache(num_blocks, BLOCK)
    return ref, ours


@pytest.mark.parametrize("kind", sorted(TINY_CONFIGS))
def test_tiny_models_match_torch(kind, tmp_path):
    make_tiny(kind, tmp_path)
    ref, ours = runners(tmp_path, 48)
    seqs = sequences(48, [40, 14, 9], 512, seed=2)
    steps = [[(0, 33), (1, 9)]]  # two prompts, one longer than a 32-query tile
    steps += [[(1, 1), (0, 1)], [(0, 1), (1, 1)]]  # decodes at different lengths
    steps += [[(0, 1), (2, 5), (1, 1)], [(2, 4), (1, 1), (0, 1)]]  # decodes + prefill chunks
    check_steps(ref, ours, seqs, steps)


def test_smollm2_matches_torch(smollm2_dir):
    ref, ours = runners(smollm2_dir, 24)
    assert ours.plan.attention is False  # tp 1: nothing split
    seqs = sequences(24, [22, 15], ref.cfg.vocab_size, seed=4)
    # Prefill, a chunk over cached KV, decodes (mixed batches are covered by the tiny models).
    check_steps(ref, ours, seqs, [[(0, 9), (1, 12)], [(0, 11)], [(0, 1), (1, 1)]])


def test_minilm_embeddings_match_torch(minilm_dir):
    from transformers import AutoTokenizer

    from llmserve.backends.jax.bert import JaxEmbedder
    from llmserve.backends.torch.embedder import TorchEmbedder

    texts = ["A man is eating food.", "Paged attention keeps the KV cache in fixed-size blocks.", "hi"]
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    ids = [tokenizer(t)["input_ids"] for t in texts]
    ours = JaxEmbedder(str(minilm_dir))
    assert (ours.dim, ours.max_model_len) == (384, 512)
    want = TorchEmbedder(str(minilm_dir))
    np.testing.assert_allclose(ours.embed(ids), want.embed(ids), atol=1e-5)
    raw = np.array(ours.embed(ids[:1], normalize=False))
    np.testing.assert_allclose(raw, want.embed(ids[:1], normalize=False), atol=1e-4)
    assert np.linalg.norm(raw) > 1.5


def decode_item(seq_id: int, length: int, table: list[int]) -> BatchItem:
    ids = [random.Random(seq_id).randrange(512) for _ in range(length)]
    return BatchItem(seq_id, ids[-1:], length - 1, table, True, SamplingParams(), ids, [])


def test_warm_up_covers_decode_and_prefill_and_compiles_stay_bounded(tmp_path, caplog):
    make_tiny("llama", tmp_path)
    runner = JaxModelRunner(str(tmp_path), "float32", max_num_seqs=8, max_num_batched_tokens=64)
    runner.load()
    with caplog.at_level(logging.INFO, logger="llmserve.jax"):
        runner.allocate_kv_cache(64, BLOCK)
    # Decodes: 1..8 sequences; prefill: 64 tokens = 2 tiles, plus a partial tile = 3 -> 4.
    warm = {(1, 0), (2, 0), (4, 0), (8, 0), (0, 1), (0, 2), (0, 4)}
    assert set(runner.compiled) == warm
    assert "step bucket decode=8 prefill_tiles=0" in caplog.text
    rng = random.Random(0)
    for _ in range(12):  # decode-only and prefill-only batches of any size: no new compile
        n = rng.randrange(1, 9)
        batch = [decode_item(s, rng.randrange(2, 30), list(range(s * 8, s * 8 + 8))) for s in range(n)]
        runner.forward(Batch(batch, block_size=BLOCK))
        prompt = [rng.randrange(512) for _ in range(rng.randrange(2, 60))]
        chunk = BatchItem(9, prompt, 0, list(range(16)), True, SamplingParams(), prompt, [])
        runner.forward(Batch([chunk], block_size=BLOCK))
    assert set(runner.compiled) == warm
    # A mixed batch runs at once as two warm calls; its own bucket compiles in the background.
    mixed = [decode_item(0, 10, list(range(8))), chunk]
    assert len(runner.forward(Batch(mixed, block_size=BLOCK))) == 2
    runner.wait_for_compiles()
    assert step_key(mixed) in runner.compiled
    assert len(runner.forward(Batch(mixed, block_size=BLOCK))) == 1
    bound = (4 + 1) * (3 + 1) - 1  # (decode buckets + none) x (tile buckets + none)
    assert len(runner.compiled) <= bound


def test_auto_dtype_and_bf16_on_cpu(tmp_path):
    make_tiny("qwen2", tmp_path)
    runner = JaxModelRunner(str(tmp_path), "auto", warmup=False)
    assert runner.load().dtype == "float32"  # XLA:CPU: see resolve_dtype
    runner = JaxModelRunner(str(tmp_path), "bfloat16", warmup=False)
    assert runner.load().dtype == "bfloat16"
    runner.allocate_kv_cache(8, BLOCK)
    seq = sequences(8, [7], 512)[0]
    last, _ = jax_forward(runner, Batch([seq.item(7)], block_size=BLOCK))
    assert last[0].dtype == np.float32 and np.isfinite(last[0]).all()


def test_unsupported_models_are_clear_errors(tmp_path, minilm_dir):
    config = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 64}
    config |= {"num_attention_heads": 4, "num_hidden_layers": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="GPTNeoXForCausalLM"):
        JaxModelRunner(str(tmp_path), "float32").load()
    with pytest.raises(UnsupportedModelError, match="embedding model"):
        JaxModelRunner(str(minilm_dir), "float32").load()
