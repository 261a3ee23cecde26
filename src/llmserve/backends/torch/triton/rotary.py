"""Rotary position embedding, in place, on the q and k heads of the fused qkv rows.

"Rotate half" layout (HF Llama): for each head, (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
with cos/sin [tokens, head_dim / 2] in fp32 computed once per step and shared by all layers.
Grid ``(tokens, cdiv(heads, BLOCK_H))``: a program rotates BLOCK_H heads of one token, loading
that token's cos/sin once. In place, so q and k stay inside the qkv matmul output (no copies).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_H = 8


@triton.jit
def _rope_kernel(
    x_ptr, stride_xt, stride_xh, cos_ptr, sin_ptr, stride_ct, heads,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    j = tl.arange(0, HALF_PAD)
    j_mask = j < HALF
    mask = (h < heads)[:, None] & j_mask[None, :]
    cos = tl.load(cos_ptr + token * stride_ct + j, mask=j_mask, other=0.0)[None, :]
    sin = tl.load(sin_ptr + token * stride_ct + j, mask=j_mask, other=0.0)[None, :]
    ptrs = x_ptr + token * stride_xt + h[:, None] * stride_xh + j[None, :]
    x1 = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptrs, (x1 * cos - x2 * sin).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(ptrs + HALF, (x2 * cos + x1 * sin).to(x_ptr.dtype.element_ty), mask=mask)


def rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate ``x`` [tokens, heads, head_dim] in place (head_dim contiguous, rows may be
    strided); ``cos`` and ``sin`` are float32 [tokens, head_dim / 2]."""
    tokens, heads, head_dim = x.shape
    if x.stride(2) != 1 or head_dim % 2 or cos.stride(1) != 1 or cos.stride() != sin.stride():
        raise ValueError("rope_ needs an even, contiguous head_dim and contiguous cos/sin tables")
    if tokens == 0:
        return
    half = head_dim // 2
    _rope_kernel[(tokens, triton.cdiv(heads, BLOCK_H))](
        x, x.stride(0), x.stride(1), cos, sin, cos.stride(0), heads,
        HALF=half, HALF_PAD=triton.next_power_of_2(half), BLOCK_H=BLOCK_H, num_warps=4,
    )  # fmt: skip
