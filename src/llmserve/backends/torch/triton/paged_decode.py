"""Paged-attention decode: one new query token per sequence against its paged KV cache.

Flash-decoding over block tables. Grid ``(num_seqs, kv_heads, num_splits)``: a program takes one
sequence, one KV head and all the query heads that share it (GQA: K/V are read once per group,
the group is the M side of ``tl.dot``, padded to 16), and one of ``num_splits`` equal parts of
that sequence's attended context (cut in the kernel from its actual length, whole tiles each). It
walks its part in tiles of ``TILE`` tokens; a tile's rows are gathered from the blocks through the
block table (``block_table[t // block_size]``), so any block size works, even one smaller than a
tile. With one split the program writes the output; with several, each writes its running max,
sum and unnormalised output, and ``_reduce_kernel`` (grid ``(num_seqs, heads)``) merges them.

Decode reads the whole cache once per step, so it is bandwidth bound: the split count is chosen
so that about two programs per SM are in flight even at batch 1 (``decode_splits``). It depends
only on Python ints (batch size, padded context), never on tensor values, so a launch makes no
host sync and the grid of a captured CUDA graph stays valid; since each sequence is cut by its
own length, a graph sized for max_model_len still spreads a short context over the splits.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

TILE = 64  # KV tokens per inner iteration on a GPU (tests pass smaller tiles)
_MIN_GROUP = 16  # tl.dot needs M >= 16


# Values that change from step to step are not specialised on (no recompiles while serving).
@triton.jit(do_not_specialize=["stride_tb", "num_splits"])
def _decode_kernel(
    q_ptr, stride_qt, stride_qh,
    cache_ptr, stride_cb, stride_cs, stride_ckv, stride_ch,
    tables_ptr, stride_tb, lens_ptr,
    out_ptr, stride_ot, stride_oh,
    m_ptr, l_ptr, acc_ptr,
    scale_log2, window, num_splits,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    num_heads = tl.num_programs(1) * GROUP
    ctx = tl.load(lens_ptr + seq).to(tl.int32)
    lo = 0
    if window > 0:
        lo = tl.maximum(ctx - window, 0)
    part = tl.cdiv(tl.cdiv(ctx - lo, num_splits), TILE) * TILE  # this sequence's tokens per split
    start = lo + split * part
    end = tl.minimum(start + part, ctx)  # empty for the splits past the context: they write m=-1e30

    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, D_PAD)
    heads = kvh * GROUP + g
    g_mask = g < GROUP
    d_mask = d < HEAD_DIM
    q = tl.load(
        q_ptr + seq * stride_qt + heads[:, None] * stride_qh + d[None, :],
        mask=g_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # [GROUP_PAD, D_PAD]
    # Finite start value: a fully masked tile then gives exp2(-inf - m) = 0, never NaN.
    m_i = tl.full([GROUP_PAD], -1e30, dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, D_PAD], dtype=tl.float32)
    for t0 in range(start, end, TILE):
        t = t0 + tl.arange(0, TILE)
        t_mask = t < end
        block = tl.load(tables_ptr + seq * stride_tb + t // BLOCK_SIZE, mask=t_mask, other=0)
        rows = block.to(tl.int64) * stride_cb + (t % BLOCK_SIZE) * stride_cs + kvh * stride_ch
        kv_mask = t_mask[:, None] & d_mask[None, :]
        k = tl.load(cache_ptr + rows[:, None] + d[None, :], mask=kv_mask, other=0.0)  # [TILE, D_PAD]
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # [GROUP_PAD, TILE]
        s = tl.where(t_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(cache_ptr + rows[:, None] + stride_ckv + d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    store_mask = g_mask[:, None] & d_mask[None, :]
    if SPLIT:
        row = (seq * num_heads + heads) * num_splits + split  # [GROUP_PAD] into [B, H, S]
        tl.store(m_ptr + row, m_i, mask=g_mask)
        tl.store(l_ptr + row, l_i, mask=g_mask)
        tl.store(acc_ptr + row[:, None] * HEAD_DIM + d[None, :], acc, mask=store_mask)
    else:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        out_ptrs = out_ptr + seq * stride_ot + heads[:, None] * stride_oh + d[None, :]
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=store_mask)


@triton.jit
def _reduce_kernel(
    m_ptr, l_ptr, acc_ptr, out_ptr, stride_ot, stride_oh, num_splits,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0)
    head = tl.program_id(1)
    s = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, D_PAD)
    s_mask = s < num_splits
    row = (seq * tl.num_programs(1) + head) * num_splits + s
    m = tl.load(m_ptr + row, mask=s_mask, other=-1e30)
    weight = tl.where(s_mask, tl.exp2(m - tl.max(m, 0)), 0.0)  # empty splits carry m = -1e30: 0
    total = tl.sum(tl.load(l_ptr + row, mask=s_mask, other=0.0) * weight, 0)
    acc = tl.load(
        acc_ptr + row[:, None] * HEAD_DIM + d[None, :],
        mask=s_mask[:, None] & (d < HEAD_DIM)[None, :],
        other=0.0,
    )
    out = tl.sum(acc * weight[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(
        out_ptr + seq * stride_ot + head * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=d < HEAD_DIM
    )


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # the interpreter runs programs one after another: fewest splits is fastest
    return torch.cuda.get_device_properties(device).multi_processor_count


def decode_splits(num_seqs: int, kv_heads: int, max_context: int, num_sms: int, tile: int = TILE) -> int:
    """Splits per sequence: num_seqs * kv_heads * splits ~ 2 programs per SM, no more splits than
    tiles in the longest context. A pure function of Python ints (stable inside a CUDA graph)."""
    tiles = triton.cdiv(max(max_context, 1), tile)
    want = triton.cdiv(2 * num_sms, max(num_seqs * kv_heads, 1))
    return max(min(tiles, want), 1)


def paged_decode(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    *,
    max_blocks: int,
    window: int | None = None,
    tile: int = TILE,
    splits: int | None = None,
    num_stages: int = 2,
) -> torch.Tensor:
    """Attention of ``q`` [B, H, D] (heads and head_dim contiguous; rows may be strided) over the
    paged cache [num_blocks, block_size, 2, kv_heads, D]. ``block_tables`` holds B rows of
    ``max_blocks`` block ids (2-D, or flattened); ``context_lens`` [B] counts each sequence's
    tokens including the new one. Returns [B, H * D]. ``tile``, ``splits`` and ``num_stages`` are
    tuning knobs (tests/gpu/checks.py times them)."""
    num_seqs, heads, head_dim = q.shape
    _, block_size, _, kv_heads, _ = kv_cache.shape
    if q.stride(2) != 1 or q.stride(1) != head_dim or not kv_cache.is_contiguous():
        raise ValueError("paged_decode needs contiguous heads in q and a contiguous KV cache")
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} KV heads")
    group = heads // kv_heads
    out = torch.empty(num_seqs, heads, head_dim, dtype=q.dtype, device=q.device)
    if num_seqs == 0:
        return out.view(0, heads * head_dim)
    if splits is None:
        splits = decode_splits(num_seqs, kv_heads, max_blocks * block_size, _num_sms(q.device), tile)
    if splits > 1:
        m = torch.empty(num_seqs, heads, splits, dtype=torch.float32, device=q.device)
        l_sum = torch.empty_like(m)
        acc = torch.empty(num_seqs, heads, splits, head_dim, dtype=torch.float32, device=q.device)
    else:
        m = l_sum = acc = out  # unused
    d_pad = triton.next_power_of_2(head_dim)
    _decode_kernel[(num_seqs, kv_heads, splits)](
        q, q.stride(0), q.stride(1),
        kv_cache, *kv_cache.stride()[:4],
        block_tables, max_blocks, context_lens,
        out, out.stride(0), out.stride(1),
        m, l_sum, acc,
        scale * 1.4426950408889634, window or 0, splits,
        GROUP=group, GROUP_PAD=max(_MIN_GROUP, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        D_PAD=d_pad, BLOCK_SIZE=block_size, TILE=tile, SPLIT=splits > 1,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4, num_stages=num_stages,
    )  # fmt: skip
    if splits > 1:
        _reduce_kernel[(num_seqs, heads)](
            m, l_sum, acc, out, out.stride(0), out.stride(1), splits,
            HEAD_DIM=head_dim, D_PAD=d_pad, SPLITS_PAD=triton.next_power_of_2(splits), num_warps=4,
        )  # fmt: skip
    return out.view(num_seqs, heads * head_dim)
