"""The fused C decode step (decode_step.py) against the module path it replaces, on SmolLM2
under --quantization: the same logits for decode batches of 1, 3 (integer kernels) and 6 rows
(float-activation kernels), at different context lengths, and the cases it must leave alone."""

from __future__ import annotations

import pytest
import torch

from llmserve.backends.base import Batch, BatchItem
from llmserve.backends.torch.decode_step import FusedDecode
from llmserve.backends.torch.runner import TorchModelRunner

BLOCK = 16


@pytest.fixture(scope="module", params=["int4", "int8"])
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


def test_applies_to_quantised_float32_models(runner):
    assert isinstance(runner.model.fused_decode, FusedDecode)


@pytest.mark.parametrize("batch", [1, 3, 6])
def test_same_logits_as_the_module_path(runner, batch):
    prompts = [[1, 9690, 198] + list(range(400 + 7 * i, 400 + 7 * i + 5 + 6 * i)) for i in range(batch)]
    fused, modules = _decode(runner, prompts, 4, True), _decode(runner, prompts, 4, False)
    assert torch.equal(fused.argmax(-1), modules.argmax(-1))
    torch.testing.assert_close(fused, modules, atol=2e-3, rtol=1e-4)


def test_left_alone_where_it_does_not_apply(smollm2_dir):
    plain = TorchModelRunner(str(smollm2_dir), "float32")
    plain.load()
    assert plain.model.fused_decode is None  # float projections: the module path
    bf16 = TorchModelRunner(str(smollm2_dir), "bfloat16", quantization="int8")
    bf16.load()
    assert bf16.model.fused_decode is None  # bf16 activations


def test_prompt_chunks_take_the_module_path(runner, monkeypatch):
    calls = []
    monkeypatch.setattr(FusedDecode, "__call__", lambda self, *a: calls.append(1))
    runner.forward(Batch([BatchItem(0, [1, 2, 3, 4], 0, [60], True, None, (), ())], BLOCK))
    assert not calls
