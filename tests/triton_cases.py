"""The Triton kernels' cases and their plain-torch references, shared by two runners.

``tests/test_triton_kernels.py`` runs them on CPU under the Triton interpreter (fp32, fp16);
``tests/gpu/checks.py`` runs the same cases compiled for a real GPU (fp16, bf16). Inputs are built
on CPU from fixed seeds, so both see the same numbers; each case copies them to ``device``,
compares the kernel's output with the reference on CPU and returns the largest absolute error.

Nothing here imports triton at module level: the test module must switch the interpreter on
before triton is first imported.
"""

from __future__ import annotations

import random

import torch

TOL = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),  # 8 mantissa bits; p is rounded before p @ v
}
HEADS = [(4, 4, 64), (8, 2, 64), (8, 1, 128)]  # GQA ratios 1, 4, 8; head sizes 64, 128
HEAD_IDS = ["mha", "gqa4", "gqa8"]
DECODE_CASES = [(16, None, None), (4, 3, None), (8, 6, 21)]  # (block_size, splits, window)
DECODE_IDS = ["one-split", "splits", "splits-window"]
PREFILL_CASES = [(16, None), (4, 9)]  # (block_size, window)
PREFILL_IDS = ["bs16", "bs4-window"]


def _compare(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> float:
    out = out.cpu().to(ref.dtype)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    return float((out - ref).abs().max()) if out.numel() else 0.0


def paged_cache(num_blocks, block_size, kv_heads, head_dim, dtype, seed=0):
    torch.manual_seed(seed)
    return torch.randn(num_blocks, block_size, 2, kv_heads, head_dim).to(dtype)  # garbage everywhere


def tables_for(lengths, num_blocks, block_size, seed=0) -> torch.Tensor:
    """Shuffled, disjoint block tables padded to the longest (pads point at block 0)."""
    free = list(range(num_blocks))
    random.Random(seed).shuffle(free)
    width = max(-(-n // block_size) for n in lengths)
    rows = []
    for n in lengths:
        need = -(-n // block_size)
        rows.append(free[:need] + [0] * (width - need))
        free = free[need:]
    return torch.tensor(rows)


def reference(q, cache, table, ctx, window):
    """Attention of q [q_len, H, D] (the last q_len positions of a ctx-token sequence), float64."""
    q_len, heads, head_dim = q.shape
    block_size, kv_heads = cache.shape[1], cache.shape[3]
    pos = torch.arange(ctx)
    kv = cache.view(-1, 2, kv_heads, head_dim)[
        table[pos // block_size] * block_size + pos % block_size
    ].double()
    k = kv[:, 0].repeat_interleave(heads // kv_heads, 1)
    v = kv[:, 1].repeat_interleave(heads // kv_heads, 1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * head_dim**-0.5
    q_pos = torch.arange(q_len)[:, None] + ctx - q_len
    allowed = pos[None, :] <= q_pos
    if window:
        allowed &= pos[None, :] > q_pos - window
    out = torch.einsum("hqk,khd->qhd", scores.masked_fill(~allowed, float("-inf")).softmax(-1), v)
    return out.reshape(q_len, heads * head_dim)


def decode_case(dtype, heads, kv_heads, head_dim, block_size, splits, window, *, device="cpu", tile=16,
                lengths=None) -> float:  # fmt: skip
    """One token; exactly one block; one past a block; a long context over several splits/tiles."""
    from llmserve.backends.torch.triton import paged_decode

    lengths = lengths or [1, block_size, block_size + 1, 150]
    num_blocks = max(64, sum(-(-n // block_size) for n in lengths))
    cache = paged_cache(num_blocks, block_size, kv_heads, head_dim, dtype)
    tables = tables_for(lengths, num_blocks, block_size)
    q = torch.randn(len(lengths), heads, head_dim).to(dtype)
    out = paged_decode.paged_decode(
        q.to(device), cache.to(device), tables.view(-1).to(device), torch.tensor(lengths, device=device),
        head_dim**-0.5, max_blocks=tables.shape[1], window=window, tile=tile, splits=splits,
    )  # fmt: skip
    ref = torch.cat([reference(q[i : i + 1], cache, tables[i], n, window) for i, n in enumerate(lengths)])
    return _compare(out, ref, dtype)


def strided_q_case(device="cpu", dtype=torch.float32) -> float:
    """q is a row-strided view into a fused qkv output; head_dim 80 pads to 128 lanes."""
    from llmserve.backends.torch.triton import paged_decode

    heads, kv_heads, head_dim, lengths = 4, 2, 80, [7, 33]
    cache = paged_cache(16, 8, kv_heads, head_dim, dtype)
    tables = tables_for(lengths, 16, 8)
    qkv = torch.randn(2, (heads + 2 * kv_heads) * head_dim).to(dtype)
    q = qkv[:, : heads * head_dim].view(2, heads, head_dim)
    q_dev = qkv.to(device)[:, : heads * head_dim].view(2, heads, head_dim)
    out = paged_decode.paged_decode(
        q_dev, cache.to(device), tables.to(device), torch.tensor(lengths, device=device), head_dim**-0.5,
        max_blocks=tables.shape[1], tile=16,
    )  # fmt: skip
    ref = torch.cat([reference(q[i : i + 1], cache, tables[i], n, None) for i, n in enumerate(lengths)])
    return _compare(out, ref, dtype)


def prefill_case(dtype, heads, kv_heads, head_dim, block_size, window, *, device="cpu", block_m=16,
                 block_n=16) -> float:  # fmt: skip
    """(cached, new): a whole prompt, one new token after a prefix, a chunk ending on a block
    boundary, a chunk longer than a query tile after a prefix that ends mid-block."""
    from llmserve.backends.torch.triton import prefill

    shapes = [(0, 5), (16, 1), (3, 29), (21, 35)]
    if block_m > 35:
        shapes.append((40, block_m + 7))  # still longer than one query tile
    lengths = [c + n for c, n in shapes]
    num_blocks = max(64, sum(-(-n // block_size) for n in lengths))
    cache = paged_cache(num_blocks, block_size, kv_heads, head_dim, dtype, seed=1)
    tables = tables_for(lengths, num_blocks, block_size, seed=1)
    qs = [torch.randn(n, heads, head_dim).to(dtype) for _, n in shapes]
    starts = [0]
    for _, n in shapes:
        starts.append(starts[-1] + n)
    out = prefill.prefill_attention(
        torch.cat(qs).to(device), cache.to(device), tables.to(device), torch.tensor(starts, device=device),
        torch.tensor(lengths, device=device), head_dim**-0.5, max_query=max(n for _, n in shapes),
        max_blocks=tables.shape[1], window=window, block_m=block_m, block_n=block_n,
    )  # fmt: skip
    ref = torch.cat([reference(q, cache, tables[i], lengths[i], window) for i, q in enumerate(qs)])
    return _compare(out, ref, dtype)


def kv_write_case(dtype, device="cpu") -> float:
    from llmserve.backends.torch.triton import kv_write

    tokens, kv_heads, head_dim, q_size = 5, 2, 64, 4 * 64
    cache = torch.zeros(6, 4, 2, kv_heads, head_dim, dtype=dtype, device=device)
    qkv = torch.randn(tokens, q_size + 2 * kv_heads * head_dim).to(dtype)
    kv = qkv[:, q_size:].view(tokens, 2, kv_heads, head_dim)  # strided rows, as in the model
    slots = torch.tensor([3, 4, -1, 23, 0])  # -1: a padded row, never written
    kv_write.write_kv(cache, slots.to(device), qkv.to(device)[:, q_size:].view(tokens, 2, kv_heads, head_dim))
    expected = torch.zeros(6 * 4, 2, kv_heads, head_dim, dtype=dtype)
    keep = slots >= 0
    expected[slots[keep]] = kv[keep]
    if not torch.equal(cache.cpu().view_as(expected), expected):
        raise AssertionError("the KV write differs from the reference (or wrote a padded row)")
    return 0.0


def rms_norm_case(dtype, hidden, device="cpu") -> float:
    from llmserve.backends.torch.layers import TorchOps
    from llmserve.backends.torch.triton import ops as triton_ops

    ops, ref = triton_ops.TritonOps(), TorchOps()
    torch.manual_seed(0)
    x, residual = torch.randn(7, hidden).to(dtype), torch.randn(7, hidden).to(dtype)
    weight = (1 + 0.1 * torch.randn(hidden)).to(dtype)
    x_dev, res_dev, w_dev = x.to(device), residual.to(device), weight.to(device)
    err = _compare(ops.rms_norm(x_dev, w_dev, 1e-6), ref.rms_norm(x, weight, 1e-6), dtype)
    out, new_residual = ops.add_rms_norm(x_dev, res_dev.clone(), w_dev, 1e-6)
    ref_out, ref_residual = ref.add_rms_norm(x, residual, weight, 1e-6)
    return max(err, _compare(new_residual, ref_residual, dtype), _compare(out, ref_out, dtype))


def silu_mul_case(dtype, device="cpu") -> float:
    from llmserve.backends.torch.layers import TorchOps
    from llmserve.backends.torch.triton import silu_mul

    torch.manual_seed(0)
    gate_up = torch.randn(3, 2 * 1500).to(dtype)  # two column tiles, the second one partial
    out = silu_mul.silu_mul(gate_up.to(device), block=1024)
    return _compare(out, TorchOps().silu_mul(gate_up.clone()), dtype)


def rotary_case(dtype, head_dim, device="cpu") -> float:
    """Rotary on fused qkv rows: q and k heads rotated in place, v left alone."""
    from llmserve.backends.torch.layers import TorchOps
    from llmserve.backends.torch.triton import ops as triton_ops

    ops, ref = triton_ops.TritonOps(), TorchOps()
    torch.manual_seed(0)
    tokens, qk_heads = 5, 11  # more heads than one program takes
    qkv = torch.randn(tokens, (qk_heads + 2) * head_dim).to(dtype)
    angles = torch.arange(tokens).float()[:, None] * torch.logspace(0, -3, head_dim // 2)[None, :]
    ours, theirs = qkv.clone().to(device), qkv.clone()
    ops.rope_(
        ours[:, : qk_heads * head_dim].view(tokens, qk_heads, head_dim),
        ops.rope_tables(angles.to(device), dtype),
    )
    ref.rope_(
        theirs[:, : qk_heads * head_dim].view(tokens, qk_heads, head_dim), ref.rope_tables(angles, dtype)
    )
    err = _compare(ours, theirs, dtype)
    if not torch.equal(ours[:, qk_heads * head_dim :].cpu(), qkv[:, qk_heads * head_dim :]):
        raise AssertionError("rotary changed the v heads")
    return err
