"""Fused RMSNorm, optionally with the residual add in front of it.

``residual += x; out = residual / rms(residual) * weight`` in one pass over the row: one read of
x and residual, one write of residual and out (torch needs 5-8 kernels and as many round trips).
One program per row (grid ``(rows,)``), the whole hidden vector in registers; fp32 math, the
updated residual rounded to the model dtype before it is normalised (what the next layer sees).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    x_ptr, stride_x, res_ptr, stride_r, w_ptr, out_ptr, stride_o, n, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)
        s = (x + r).to(res_ptr.dtype.element_ty)
        tl.store(res_ptr + row * stride_r + offs, s, mask=mask)
        x = s.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, 0) / n + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (x * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """RMSNorm over the last dim of ``x`` [rows, n] (rows may be strided); with ``residual``
    (same shape), first ``residual += x`` in place and normalise the sum. ``num_warps`` defaults
    to one per 256 lanes (1-16)."""
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1 or (residual is not None and residual.stride(-1) != 1):
        raise ValueError("rms_norm needs a contiguous last dimension")
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    res = residual.view(-1, n) if residual is not None else x2
    if x2.shape[0]:
        block = triton.next_power_of_2(n)
        warps = num_warps or min(max(block // 256, 1), 16)
        _rms_norm_kernel[(x2.shape[0],)](
            x2, x2.stride(0), res, res.stride(0), weight, out, out.stride(0), n, eps,
            HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=warps,
        )  # fmt: skip
    return out.view(x.shape)
