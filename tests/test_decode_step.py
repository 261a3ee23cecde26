"""The fused C decode step (decode_step.py) against the module path it replaces, on SmolLM2
in float32 and under --quantization: the same logits for decode batches of 1, 3 (integer kernels,
the float32 GEMV) and 6 rows (float-activation kernels; float32 weights go back to the module
path from 4 rows), at different context lengths, and the cases it must leave alone; in bf16, as
close to float32 arithmetic on the same weights as the module path is."""

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


def _decode(runner, prompts, steps, fused: bool, forced=None):
    """Prefill each prompt, then ``steps`` greedy decode steps; the decode steps' logits.
    ``forced``: logits [steps, rows, vocab] whose argmax tokens are fed instead of our own."""
    model, saved = runner.model, runner.model.fused_decode
    model.fused_decode = saved if fused else None
    try:
        tables = [list(range(i * 8, (i + 1) * 8)) for i in range(len(prompts))]
        tokens = [list(p) for p in prompts]
        logits, _ = runner.forward(
            Batch([BatchItem(i, t, 0, tables[i], True, None, (), ()) for i, t in enumerate(tokens)], BLOCK)
        )
        out = []
        for step in range(steps):
            chosen = logits if forced is None or step == 0 else forced[step - 1]
            for t, row in zip(tokens, chosen.argmax(-1).tolist(), strict=True):
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
    bf16 = TorchModelRunner(str(smollm2_dir), "bfloat16", quantization="int8")
    bf16.load()
    assert bf16.model.fused_decode is None  # QuantLinear's kernels take float32 activations


@pytest.fixture(scope="module")
def bf16_runners(smollm2_dir):
    """A bf16 runner and a float32 one holding the same (bf16-rounded) weights."""
    runners = [TorchModelRunner(str(smollm2_dir), dtype) for dtype in ("bfloat16", "float32")]
    for r in runners:
        r.load()
        r.allocate_kv_cache(64, BLOCK)
    with torch.no_grad():
        for p in runners[1].model.parameters():
            p.copy_(p.bfloat16().float())
    return runners


@pytest.mark.parametrize("batch", [1, 3])
def test_bf16_step_as_close_as_the_module_path(bf16_runners, batch):
    """bf16 rounds at every op, so the two paths differ by its noise: each against float32
    arithmetic on the same weights, the fused step's error is of the module path's size."""
    bf16, exact = bf16_runners
    assert bf16.model.fused_decode.bf16 and bf16.model.fused_decode.max_rows == 4
    prompts = [[1, 9690, 198] + list(range(400 + 7 * i, 400 + 7 * i + 5 + 6 * i)) for i in range(batch)]
    # every path is fed the reference's tokens, so a near tie flipped by bf16 noise cannot
    # send one path down another text
    reference = _decode(exact, prompts, 4, False)
    fused, modules = _decode(bf16, prompts, 4, True, reference), _decode(bf16, prompts, 4, False, reference)
    fused_err, module_err = (fused - reference).abs(), (modules - reference).abs()
    # the fused step's greedy token is the reference's, or one tied with it within the noise
    picked = reference.gather(-1, fused.argmax(-1, keepdim=True)).squeeze(-1)
    assert (picked >= reference.amax(-1) - 2 * module_err.amax(-1)).all()
    assert fused_err.mean() < 1.5 * module_err.mean() and fused_err.max() < 2 * module_err.max()


def test_bf16_head_logits_by_the_gemv(bf16_runners):
    head, fused = bf16_runners[0].model.lm_head, bf16_runners[0].model.fused_decode
    hidden = torch.randn(2, head.in_features).bfloat16()
    exact = hidden.float() @ head.weight.float().T
    torch.testing.assert_close(fused.logits(head, hidden), exact, atol=1e-3, rtol=1e-4)


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


@pytest.mark.parametrize("k", [576, 200, 37])  # the 16-wide loop, and its scalar tail
def test_the_gemvs_against_torch(k):
    from llmserve.backends.torch.quant_linear import kernels

    lib, threads = kernels(), torch.get_num_threads()
    torch.manual_seed(k)
    for m in (1, 2, 3):
        x, w, bias = torch.randn(m, k), torch.randn(70, k), torch.randn(70)
        out = torch.empty(m, 70)
        lib.linear_f32(x.data_ptr(), w.data_ptr(), bias.data_ptr(), out.data_ptr(), m, 70, k, threads)
        torch.testing.assert_close(out, x @ w.T + bias, atol=1e-4, rtol=1e-5)
        xb, wb, bb = x.bfloat16(), w.bfloat16(), bias.bfloat16()
        exact = xb.float() @ wb.float().T + bb.float()
        logits, rounded = torch.empty(m, 70), torch.empty(m, 70, dtype=torch.bfloat16)
        scratch = torch.empty(m, k)
        for target, as_f32 in ((logits, 1), (rounded, 0)):
            lib.linear_bf16(xb.data_ptr(), wb.data_ptr(), bb.data_ptr(), target.data_ptr(), m, 70, k, as_f32,
                            scratch.data_ptr(), threads)  # fmt: skip
        torch.testing.assert_close(logits, exact, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(rounded.float(), exact, atol=1e-4, rtol=2**-8)  # within one bf16 step
