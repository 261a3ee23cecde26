"""Paged attention (torch path and fused C decode kernel) against a naive per-sequence reference."""

from __future__ import annotations

import random

import pytest
import torch

from llmserve.backends.base import BatchItem
from llmserve.backends.torch import cpu_kernels
from llmserve.backends.torch.attention import paged_attention, write_kv
from llmserve.backends.torch.cpu_kernels import CpuKernels
from llmserve.backends.torch.layers import TorchOps
from llmserve.backends.torch.runner import StepInputs
from llmserve.engine.sampling import SamplingParams

BLOCK = 4


def reference(q, k, v, start: int, window: int | None) -> torch.Tensor:
    """Causal attention of queries at positions start.. over keys 0..: float64, one sequence."""
    heads, kv_heads = q.shape[1], k.shape[1]
    k = k.double().repeat_interleave(heads // kv_heads, dim=1)
    v = v.double().repeat_interleave(heads // kv_heads, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * q.shape[-1] ** -0.5
    qpos = torch.arange(q.shape[0])[:, None] + start
    kpos = torch.arange(k.shape[0])[None, :]
    allowed = kpos <= qpos
    if window is not None:
        allowed &= kpos > qpos - window
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(q.shape[0], -1)


PREFILLS = [(0, 7), (6, 5)]


def run_case(
    dtype, heads, kv_heads, head_dim, window, use_kernel, seed=0, decodes=5, prefills=PREFILLS, pass_kv=False
):
    """Sequences (cached prefix, new tokens): decodes and prefill chunks in one step. With few
    decodes the kernel splits work by KV head, with many by sequence. ``pass_kv`` hands attention
    the new tokens' K/V as the layers do (else it reads them back from the cache)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    shapes = [(9, 1), (30, 1), (0, 1), (17, 1), (4, 1)][:decodes] + prefills
    num_blocks = 48
    free = list(range(num_blocks))
    rng.shuffle(free)
    cache = torch.randn(num_blocks, BLOCK, 2, kv_heads, head_dim).to(dtype)  # garbage everywhere
    items, full = [], []
    for seq_id, (cached, new) in enumerate(shapes):
        total = cached + new
        need = (total + BLOCK - 1) // BLOCK
        table, free = free[:need], free[need:]
        k = torch.randn(total, kv_heads, head_dim).to(dtype)
        v = torch.randn(total, kv_heads, head_dim).to(dtype)
        q = torch.randn(new, heads, head_dim).to(dtype)
        for p in range(cached):  # the prefix is already in the cache
            slot = table[p // BLOCK] * BLOCK + p % BLOCK
            cache.view(-1, 2, kv_heads, head_dim)[slot] = torch.stack((k[p], v[p]))
        tokens = list(range(new))
        items.append(BatchItem(seq_id, tokens, cached, table, True, SamplingParams(), tokens, []))
        full.append((q, k, v, cached))
    kernel = None
    if use_kernel:
        kernels = CpuKernels.load(dtype, torch.device("cpu"))
        if kernels is None:
            pytest.skip("no C compiler for the fused CPU kernels")
        kernel = kernels.paged_decode
    step = StepInputs(items, BLOCK, window, torch.device("cpu"), kernel)
    order = sorted(range(len(items)), key=lambda i: step.last_row[i])
    q = torch.cat([full[i][0] for i in order])
    new_kv = torch.cat([torch.stack((full[i][1], full[i][2]), 1)[full[i][3] :] for i in order])
    write_kv(cache, step.meta.slot_mapping, new_kv)
    out = paged_attention(q, cache, step.meta, head_dim**-0.5, new_kv if pass_kv else None)
    for i, (qi, k, v, cached) in enumerate(full):
        rows = slice(step.last_row[i] + 1 - qi.shape[0], step.last_row[i] + 1)
        yield out[rows].double(), reference(qi, k, v, cached, window)


@pytest.mark.parametrize("use_kernel", [False, True], ids=["torch", "kernel"])
@pytest.mark.parametrize(
    "heads,kv_heads,head_dim",
    [(4, 2, 16), (9, 3, 64), (8, 1, 128), (4, 4, 32)],
    ids=["gqa", "smollm", "mqa", "mha"],
)
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("decodes", [1, 5])
def test_paged_attention_float32(heads, kv_heads, head_dim, window, use_kernel, decodes):
    for ours, ref in run_case(torch.float32, heads, kv_heads, head_dim, window, use_kernel, decodes=decodes):
        torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("use_kernel", [False, True], ids=["torch", "kernel"])
@pytest.mark.parametrize("heads,kv_heads,head_dim,decodes", [(9, 3, 64, 5), (8, 2, 128, 1), (4, 2, 32, 3)])
def test_paged_attention_bfloat16(use_kernel, heads, kv_heads, head_dim, decodes):
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("CPU without native bf16")
    for ours, ref in run_case(
        torch.bfloat16, heads, kv_heads, head_dim, 5, use_kernel, seed=1, decodes=decodes
    ):
        torch.testing.assert_close(ours, ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(
    "prefills",
    [[(0, 20)], [(37, 11)], [(0, 7), (6, 5), (13, 3), (5, 9), (0, 1 + BLOCK)], [(8, 5), (8, 2)]],
    ids=["one", "one-with-prefix", "varlen", "same-prefix"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_without_mask(prefills, dtype):
    """Prompt chunks (alone, with cached prefixes of different lengths, after decodes) attend
    without a dense mask on CPU and match the reference."""
    step = StepInputs(
        [BatchItem(0, [1, 2], 3, [0, 1], True, SamplingParams(), [1], [])],
        BLOCK,
        None,
        torch.device("cpu"),
        None,
    )
    assert step.meta.prefill.split and step.meta.prefill.mask is None
    tol = {"atol": 2e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for decodes in (0, 2):
        for ours, ref in run_case(
            dtype, 9, 3, 64, None, False, decodes=decodes, prefills=prefills, pass_kv=True
        ):
            torch.testing.assert_close(ours, ref, **tol)


def test_block_table_too_short_is_rejected():
    item = BatchItem(0, [1, 2, 3], 2, [0], True, SamplingParams(), [1, 2, 3], [])
    with pytest.raises(ValueError, match="block table too short"):
        StepInputs([item], BLOCK, None, torch.device("cpu"), None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernels_match_torch_ops(dtype):
    kernels = CpuKernels.load(dtype, torch.device("cpu"))
    if kernels is None:
        pytest.skip("no C compiler for the fused CPU kernels")
    ref = TorchOps()
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 2e-2}
    torch.manual_seed(0)
    x, residual = torch.randn(5, 96).to(dtype), torch.randn(5, 96).to(dtype)
    weight = (1 + 0.1 * torch.randn(96)).to(dtype)
    torch.testing.assert_close(kernels.rms_norm(x, weight, 1e-6), ref.rms_norm(x, weight, 1e-6), **tol)
    out, new_residual = kernels.add_rms_norm(x, residual.clone(), weight, 1e-6)
    ref_out, ref_residual = ref.add_rms_norm(x, residual, weight, 1e-6)
    torch.testing.assert_close(new_residual, ref_residual, **tol)
    torch.testing.assert_close(out, ref_out, **tol)
    gate_up = torch.randn(5, 64).to(dtype)
    torch.testing.assert_close(kernels.silu_mul(gate_up), ref.silu_mul(gate_up), **tol)
    # rotary on the q/k heads of a fused qkv row, leaving v untouched
    qkv = torch.randn(5, 7 * 16).to(dtype)
    angles = torch.arange(5).float()[:, None] * torch.logspace(0, -3, 8)[None, :]
    ours, theirs = qkv.clone(), qkv.clone()
    kernels.rope_(ours[:, : 6 * 16].view(5, 6, 16), kernels.rope_tables(angles, dtype))
    ref.rope_(theirs[:, : 6 * 16].view(5, 6, 16), ref.rope_tables(angles, dtype))
    torch.testing.assert_close(ours, theirs, **tol)
    assert torch.equal(ours[:, 6 * 16 :], qkv[:, 6 * 16 :])


def test_cpu_kernel_source_is_package_data_and_keys_the_cache():
    source = cpu_kernels._source()  # csrc/cpu_kernels.c, read through importlib.resources
    assert "void paged_decode(" in source
    # An edited kernel file must build a new library, never load the stale one.
    assert cpu_kernels._cache_path(source) != cpu_kernels._cache_path(source + "\n/* edited */")
    assert cpu_kernels._cache_path(source) == cpu_kernels._cache_path(source)
