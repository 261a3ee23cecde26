"""Prefill / extend attention: new query tokens of many sequences against their paged KV cache.

The runner writes the new tokens' K/V into the cache before attention, so a sequence's keys are
simply positions ``0 .. context_len - 1`` of its block table, and its ``q_len`` new queries sit
at the end (query i at position ``context_len - q_len + i``): one loop covers the cached prefix
and the causal part of the new tokens. Queries are packed ([num_tokens, heads, head_dim], no
padding); ``query_starts`` [num_seqs + 1] delimits each sequence's rows.

Grid ``(num_seqs, heads, cdiv(max_query, BLOCK_M))``: one program per (sequence, head, query
tile), FlashAttention-2 style (online softmax in fp32, exp2 with the scale folded in). Tiles past
a sequence's length exit at once. A tile only visits keys up to its last query's position (and
from its first query's window start), so the causal part costs half of a full square.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M, BLOCK_N = 64, 64  # H100: 64x64 tiles, 4 warps, 2 stages fit any head_dim <= 256 in SMEM


@triton.jit(do_not_specialize=["stride_tb"])  # changes every step: no recompiles while serving
def _prefill_kernel(
    q_ptr, stride_qt, stride_qh,
    cache_ptr, stride_cb, stride_cs, stride_ckv, stride_ch,
    tables_ptr, stride_tb, starts_ptr, lens_ptr,
    out_ptr, stride_ot, stride_oh,
    scale_log2, window,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0)
    head = tl.program_id(1)
    tile = tl.program_id(2)
    q_start = tl.load(starts_ptr + seq).to(tl.int32)
    q_len = tl.load(starts_ptr + seq + 1).to(tl.int32) - q_start
    if tile * BLOCK_M >= q_len:
        return
    ctx = tl.load(lens_ptr + seq).to(tl.int32)
    prefix = ctx - q_len
    kvh = head // GROUP

    m_idx = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, D_PAD)
    m_mask = m_idx < q_len
    d_mask = d < HEAD_DIM
    q_pos = prefix + m_idx
    q = tl.load(
        q_ptr + (q_start + m_idx)[:, None] * stride_qt + head * stride_qh + d[None, :],
        mask=m_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # [BLOCK_M, D_PAD]
    hi = tl.minimum(prefix + tile * BLOCK_M + BLOCK_M, ctx)  # past the tile's last query
    lo = 0
    if window > 0:
        lo = tl.maximum(prefix + tile * BLOCK_M - window + 1, 0)
    m_i = tl.full([BLOCK_M], -1e30, dtype=tl.float32)  # finite: masked rows never make NaN
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        t = n0 + tl.arange(0, BLOCK_N)
        t_mask = t < hi
        block = tl.load(tables_ptr + seq * stride_tb + t // BLOCK_SIZE, mask=t_mask, other=0)
        rows = block.to(tl.int64) * stride_cb + (t % BLOCK_SIZE) * stride_cs + kvh * stride_ch
        kv_mask = t_mask[:, None] & d_mask[None, :]
        k = tl.load(cache_ptr + rows[:, None] + d[None, :], mask=kv_mask, other=0.0)  # [BLOCK_N, D_PAD]
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # [BLOCK_M, BLOCK_N]
        allowed = t_mask[None, :] & (t[None, :] <= q_pos[:, None])
        if window > 0:
            allowed = allowed & (t[None, :] > q_pos[:, None] - window)
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(cache_ptr + rows[:, None] + stride_ckv + d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    out_ptrs = out_ptr + (q_start + m_idx)[:, None] * stride_ot + head * stride_oh + d[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def prefill_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_starts: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    *,
    max_query: int,
    max_blocks: int,
    window: int | None = None,
    block_m: int = BLOCK_M,
    block_n: int = BLOCK_N,
    num_stages: int = 2,
) -> torch.Tensor:
    """Causal attention of packed new queries ``q`` [num_tokens, H, D] over the paged cache that
    already holds their K/V. ``block_tables``: num_seqs rows of ``max_blocks`` ids; ``query_starts``
    [num_seqs + 1]: first row of each sequence in ``q``; ``context_lens`` [num_seqs]: cached +
    new tokens. Returns [num_tokens, H * D]."""
    num_tokens, heads, head_dim = q.shape
    _, block_size, _, kv_heads, _ = kv_cache.shape
    if q.stride(2) != 1 or not kv_cache.is_contiguous():
        raise ValueError("prefill_attention needs a contiguous head_dim in q and a contiguous KV cache")
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} KV heads")
    num_seqs = context_lens.shape[0]
    out = torch.empty(num_tokens, heads, head_dim, dtype=q.dtype, device=q.device)
    if num_tokens == 0:
        return out.view(0, heads * head_dim)
    grid = (num_seqs, heads, triton.cdiv(max_query, block_m))
    _prefill_kernel[grid](
        q, q.stride(0), q.stride(1),
        kv_cache, *kv_cache.stride()[:4],
        block_tables, max_blocks, query_starts, context_lens,
        out, out.stride(0), out.stride(1),
        scale * 1.4426950408889634, window or 0,
        GROUP=heads // kv_heads, HEAD_DIM=head_dim, D_PAD=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_N=block_n,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4, num_stages=num_stages,
    )  # fmt: skip
    return out.view(num_tokens, heads * head_dim)
