"""``TritonOps``: the fused-op seam of the model code (``TorchOps``) backed by Triton kernels.

The runner installs it on CUDA devices: the layers call ``rms_norm`` / ``add_rms_norm`` /
``silu_mul`` / ``rope_`` / ``write_kv`` through ``StepContext.ops``, and attention reaches
``paged_decode`` and ``prefill`` through ``DecodeGroup.kernel`` / ``PrefillGroup.kernel`` (as the C
decode kernel does on CPU). Inputs the kernels do not take (strided last dims, odd head sizes)
fall back to the torch ops, so the model code never needs to know which op set runs.
"""

from __future__ import annotations

import torch

from llmserve.backends.torch.layers import TorchOps
from llmserve.backends.torch.triton import kv_write, paged_decode, prefill, rms_norm, rotary, silu_mul

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class TritonOps(TorchOps):
    """TorchOps with the hot ops replaced by Triton kernels (CUDA, or the Triton interpreter)."""

    def _ok(self, *tensors: torch.Tensor) -> bool:
        return all(t.dtype in _DTYPES and t.stride(-1) == 1 for t in tensors)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if not (self._ok(x, weight) and x.dim() == 2):
            return super().rms_norm(x, weight, eps)  # e.g. Qwen3's per-head q/k norm on a strided view
        return rms_norm.rms_norm(x, weight, eps)

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``residual += x`` in place; returns (rms_norm(residual) * weight, residual)."""
        if not (self._ok(x, residual, weight) and x.dim() == 2 and residual.is_contiguous()):
            return super().add_rms_norm(x, residual, weight, eps)
        return rms_norm.rms_norm(x, weight, eps, residual), residual

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        if not (self._ok(gate_up) and gate_up.dim() == 2):
            return super().silu_mul(gate_up)
        return silu_mul.silu_mul(gate_up)

    def rope_tables(self, angles: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return angles.cos(), angles.sin()  # float32 [tokens, head_dim / 2], contiguous

    def rope_(self, x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> None:
        rotary.rope_(x, *tables)

    def write_kv(self, kv_cache: torch.Tensor, slot_mapping: torch.Tensor, kv: torch.Tensor) -> None:
        kv_write.write_kv(kv_cache, slot_mapping, kv)

    def paged_decode(self, q: torch.Tensor, kv_cache: torch.Tensor, group, scale: float) -> torch.Tensor:
        """``DecodeGroup.kernel``: q [B, H, D] -> [B, H * D]."""
        return paged_decode.paged_decode(
            q,
            kv_cache,
            group.block_ids,
            group.context_lens,
            scale,
            max_blocks=group.max_blocks,
            window=group.window,
        )

    def prefill(self, q: torch.Tensor, kv_cache: torch.Tensor, group, scale: float) -> torch.Tensor:
        """``PrefillGroup.kernel``: packed q [tokens, H, D] -> [tokens, H * D]."""
        return prefill.prefill_attention(
            q,
            kv_cache,
            group.block_ids,
            group.query_starts,
            group.context_lens,
            scale,
            max_query=group.max_query,
            max_blocks=group.max_blocks,
            window=group.window,
        )
