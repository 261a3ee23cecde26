"""The fused C decode step (decode_step.py) against the module path it replaces, on SmolLM2
in float32 and under --quantization: the same logits for decode batches of 1, 3 (integer kernels,
the float32 GEMV) and 6 rows (float-activation kernels; float32 weights go back to the module
path from 4 rows), at different context lengths, and the cases it must leave alone."""

from __future__ import annotations

import pytest
import torch

from llmserve.backends.base import Batch, BatchItem
from llmserve.backends.torch.decode_step import FusedDecode
from llmserve.backends.torch.runner import TorchModelRunner

BLOCK = 16


@pytest.fixture(scope="module", params=["int4", "int8", None])
def runner(request, smollm2_dir):
    runner = TorchModelRunner(str(smollm2_dir), "float32", quantization=request.param)
    runner.load()
    runner.allocate_kv_cache(64, BLOCK)
    return runner


def _decode(runner, prompts, steps, fused: bool):
    """Prefill each prompt, then ``steps`` greedy decode steps; the decode steps' logits."""
    model, saved = runner.model, runner.model.fused_decode
    model.fused_decode = saved if fused else None
    try:
        tables = [list(range(i * 8, (i + 1) * 8)) for i in range(len(prompts))]
        tokens = [list(p) for p in prompts]
        logits, _ = runner.forward(
            Batch([BatchItem(i, t, 0, tables[i], True, None, (), ()) for i, t in enumerate(tokens)], BLOCK)
        )
        out = []
        for _ in range(steps):
            for t, row in zip(tokens, logits.argmax(-1).tolist(), strict=True):
                t.append(row)
            items = [
                BatchItem(i, t[-1:], len(t) - 1, tables[i], True, None, (), ()) for i, t in enumerate(tokens)
            ]
            logits, _ = runner.forward(Batch(items, BLOCK))
            out.append(logits)
        return torch.stack(out)
    finally:
        model.fused_decode = saved


def test_applies_to_float32_models(runner):
    fused = runner.model.fused_decode
    assert isinstance(fused, FusedDecode)
    assert fused.max_rows == (4 if runner.quantization is None else 64)


@pytest.mark.parametrize("batch", [1, 3, 6])
def test_same_logits_as_the_module_path(runner, batch):
    prompts = [[1, 9690, 198] + list(range(400 + 7 * i, 400 + 7 * i + 5 + 6 * i)) for i in range(batch)]
    fused, modules = _decode(runner, prompts, 4, True), _decode(runner, prompts, 4, False)
    assert torch.equal(fused.argmax(-1), modules.argmax(-1))
    torch.testing.assert_close(fused, modules, atol=2e-3, rtol=1e-4)


def test_left_alone_where_it_does_not_apply(smollm2_dir):
    for quant in (None, "int8"):
        bf16 = TorchModelRunner(str(smollm2_dir), "bfloat16", quantization=quant)
        bf16.load()
        assert bf16.model.fused_decode is None  # bf16 activations


def test_float32_head_logits_by_the_gemv(smollm2_dir):
    runner = TorchModelRunner(str(smollm2_dir), "float32")
    runner.load()
    head, fused = runner.model.lm_head, runner.model.fused_decode
    hidden = torch.randn(3, head.in_features)
    torch.testing.assert_close(fused.logits(head, hidden), head(hidden), atol=1e-4, rtol=1e-4)
    many = torch.randn(5, head.in_features)
    assert torch.equal(fused.logits(head, many), head(many))  # from 4 rows: torch's matmul


def test_prompt_chunks_take_the_module_path(runner, monkeypatch):
    calls = []
    monkeypatch.setattr(FusedDecode, "__call__", lambda self, *a: calls.append(1))
    runner.forward(Batch([BatchItem(0, [1, 2, 3, 4], 0, [60], True, None, (), ())], BLOCK))
    assert not calls
