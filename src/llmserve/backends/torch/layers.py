"""Building blocks shared by the decoder families: norm, rotary embedding, gated MLP, attention.

Projections that read the same input are fused at load time (q/k/v into one matmul, gate/up
into one), so a decoder layer is four matmuls plus a few fused ops. The fused ops go through an
``ops`` object: ``TorchOps`` here (any device), ``CpuKernels`` (C kernels) on CPU, or ``TritonOps``
(Triton kernels) on CUDA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmserve.arch.registry import UnsupportedModelError
from llmserve.backends.torch.attention import AttentionMetadata, paged_attention, write_kv


class TorchOps:
    """Reference implementations of the fused ops, in plain torch."""

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(rms_norm(x + residual) * weight, x + residual)."""
        residual = x + residual
        return self.rms_norm(residual, weight, eps), residual

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        half = gate_up.shape[-1] // 2
        return F.silu(gate_up[:, :half]).mul_(gate_up[:, half:])

    def rope_tables(self, angles: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """From float32 angles [tokens, head_dim / 2]: cos and signed sin [tokens, 1, head_dim]."""
        cos, sin = angles.cos(), angles.sin()
        return torch.cat((cos, cos), -1)[:, None].to(dtype), torch.cat((-sin, sin), -1)[:, None].to(dtype)

    def rope_(self, x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Rotate ``x`` [tokens, heads, head_dim] in place ("rotate half" layout)."""
        cos, sin = tables
        rotated = torch.roll(x, x.shape[-1] // 2, dims=-1)  # [x2, x1]; sin carries rotate_half's minus
        x.mul_(cos).addcmul_(rotated, sin)

    def write_kv(self, kv_cache: torch.Tensor, slot_mapping: torch.Tensor, kv: torch.Tensor) -> None:
        """Store new tokens' K/V [tokens, 2, kv_heads, head_dim] at their cache slots."""
        write_kv(kv_cache, slot_mapping, kv)


@dataclass(slots=True)
class StepContext:
    """Per-step inputs every layer shares: attention metadata, rotary tables, the op set."""

    attn: AttentionMetadata
    rope: tuple[torch.Tensor, torch.Tensor]
    ops: TorchOps


class RMSNorm(nn.Module):
    """Root-mean-square layer norm; with ``residual`` it first adds x into it (fused)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor, ops: TorchOps, residual: torch.Tensor | None = None) -> Any:
        if residual is None:
            return ops.rms_norm(x, self.weight, self.eps)
        return ops.add_rms_norm(x, residual, self.weight, self.eps)


class RotaryEmbedding:
    """Rotary position embedding frequencies, with linear / llama3 scaling.

    Not a module: it holds no weights, so models can be built on the meta device.
    """

    def __init__(self, head_dim: int, theta: float, scaling: dict[str, Any] | None) -> None:
        inv_freq = 1.0 / (
            theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim)
        )
        rope_type = (scaling or {}).get("rope_type", "default")
        if rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, scaling)
        elif rope_type == "linear":
            inv_freq = inv_freq / float(scaling["factor"])
        elif rope_type != "default":
            raise UnsupportedModelError(f"rope scaling type {rope_type!r} is not supported")
        self.inv_freq = inv_freq.float()

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """float32 [tokens, head_dim / 2]: position times each frequency."""
        if self.inv_freq.device != positions.device:
            self.inv_freq = self.inv_freq.to(positions.device)
        return positions.float()[:, None] * self.inv_freq[None, :]


def _llama3_inv_freq(inv_freq: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    factor = float(p["factor"])
    low, high = float(p.get("low_freq_factor", 1.0)), float(p.get("high_freq_factor", 4.0))
    original = float(p["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    mid = (1 - smooth) * scaled / factor + smooth * scaled
    is_mid = (wavelen >= original / high) & (wavelen <= original / low)
    return torch.where(is_mid, mid, scaled)


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one matmul."""

    def __init__(self, hidden: int, intermediate: int, act: str, bias: bool) -> None:
        super().__init__()
        if act not in ("silu", "swish"):
            raise UnsupportedModelError(f"activation {act!r} is not supported")
        self.gate_up_proj = nn.Linear(hidden, 2 * intermediate, bias=bias)
        self.down_proj = nn.Linear(intermediate, hidden, bias=bias)

    def forward(self, x: torch.Tensor, ops: TorchOps) -> torch.Tensor:
        return self.down_proj(ops.silu_mul(self.gate_up_proj(x)))  # [tokens, 2 * inter] -> [tokens, hidden]


class PagedAttention(nn.Module):
    """Self-attention with fused QKV, optional q/k RMSNorm (Qwen3), rotary, GQA, paged KV cache."""

    def __init__(
        self,
        hidden: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        *,
        qkv_bias: bool,
        o_bias: bool,
        qk_norm_eps: float | None,
    ) -> None:
        super().__init__()
        if heads % kv_heads:
            raise UnsupportedModelError(f"{heads} attention heads are not a multiple of {kv_heads} KV heads")
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_size, self.kv_size = heads * head_dim, kv_heads * head_dim
        self.scale = head_dim**-0.5
        self.qkv_proj = nn.Linear(hidden, self.q_size + 2 * self.kv_size, bias=qkv_bias)
        self.o_proj = nn.Linear(self.q_size, hidden, bias=o_bias)
        self.q_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None
        self.k_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None

    def forward(self, x: torch.Tensor, step: StepContext, kv_cache: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[0]
        qkv = self.qkv_proj(x)  # [tokens, (heads + 2 * kv_heads) * head_dim]
        qk = qkv[:, : self.q_size + self.kv_size].view(tokens, self.heads + self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            qk[:, : self.heads] = self.q_norm(qk[:, : self.heads], step.ops)
            qk[:, self.heads :] = self.k_norm(qk[:, self.heads :], step.ops)
        step.ops.rope_(qk, step.rope)  # in place: qkv now holds rotated q and k
        kv = qkv[:, self.q_size :].view(tokens, 2, self.kv_heads, self.head_dim)
        step.ops.write_kv(kv_cache, step.attn.slot_mapping, kv)
        return self.o_proj(paged_attention(qk[:, : self.heads], kv_cache, step.attn, self.scale, kv))
