"""KV-cache write: store each new token's K and V at its cache slot.

The cache layout ([num_blocks, block_size, 2, kv_heads, head_dim]) keeps a token's K and V in one
contiguous row of ``2 * kv_heads * head_dim`` values, and the new K/V are the tail of each fused
qkv row, also contiguous: the write is one row copy per token. Grid ``(num_tokens,
cdiv(row, BLOCK))``. A negative slot means "padding, do not write" (rows a CUDA graph pads a
batch with), so padded tokens never touch a real block.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK = 2048


@triton.jit
def _kv_write_kernel(kv_ptr, stride_kt, cache_ptr, slots_ptr, ROW: tl.constexpr, BLOCK: tl.constexpr):
    token = tl.program_id(0)
    slot = tl.load(slots_ptr + token).to(tl.int64)
    if slot >= 0:
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < ROW
        values = tl.load(kv_ptr + token * stride_kt + offs, mask=mask)
        tl.store(cache_ptr + slot * ROW + offs, values, mask=mask)


def write_kv(kv_cache: torch.Tensor, slot_mapping: torch.Tensor, kv: torch.Tensor) -> None:
    """Store ``kv`` [num_tokens, 2, kv_heads, head_dim] (rows may be strided, each row's
    values contiguous) at ``slot_mapping`` [num_tokens] slots of the contiguous cache."""
    num_tokens = kv.shape[0]
    row = kv[0].numel() if num_tokens else 0
    if not kv_cache.is_contiguous() or kv.dtype != kv_cache.dtype:
        raise ValueError("write_kv needs a contiguous cache of the K/V dtype")
    if num_tokens and kv[0].stride() != kv_cache[0, 0].stride():
        raise ValueError("write_kv needs each token's K/V values contiguous")
    if num_tokens == 0:
        return
    block = min(triton.next_power_of_2(row), MAX_BLOCK)
    _kv_write_kernel[(num_tokens, triton.cdiv(row, block))](
        kv, kv.stride(0), kv_cache, slot_mapping, ROW=row, BLOCK=block, num_warps=4
    )
