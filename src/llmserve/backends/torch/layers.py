"""Building blocks shared by the decoder families: norm, rotary embedding, gated MLP, attention.

Projections that read the same input are fused at load time (q/k/v into one matmul, gate/up
into one), so a decoder layer is four matmuls plus a handful of cheap ops.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmserve.backends.torch.attention import AttentionMetadata, paged_attention, write_kv
from llmserve.models.registry import UnsupportedModelError


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Llama)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps = eps
        self.shape = (dim,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.shape, self.weight, self.eps)


class RotaryEmbedding:
    """Rotary position embedding, HF "rotate half" layout, with linear / llama3 frequency scaling.

    ``cos_sin(positions)`` is computed once per step and shared by every layer; the sign of
    rotate-half is folded into ``sin`` so applying it is a roll and two multiply-adds. Not a
    module: it holds no weights, so models can be built on the meta device.
    """

    def __init__(self, head_dim: int, theta: float, scaling: dict[str, Any] | None) -> None:
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim))
        rope_type = (scaling or {}).get("rope_type", "default")
        if rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, scaling)
        elif rope_type == "linear":
            inv_freq = inv_freq / float(scaling["factor"])
        elif rope_type != "default":
            raise UnsupportedModelError(f"rope scaling type {rope_type!r} is not supported")
        self.inv_freq = inv_freq.float()
        self.sign = torch.ones(head_dim, device="cpu")
        self.sign[: head_dim // 2] = -1.0
        self.half = head_dim // 2

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin, each [num_tokens, 1, head_dim] in ``dtype``."""
        if self.inv_freq.device != positions.device:
            self.inv_freq, self.sign = self.inv_freq.to(positions.device), self.sign.to(positions.device)
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        cos = angles.cos().to(dtype)
        sin = (angles.sin() * self.sign).to(dtype)
        return cos[:, None, :], sin[:, None, :]

    def apply_(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """Rotate ``x`` [num_tokens, heads, head_dim] in place."""
        rotated = torch.roll(x, self.half, dims=-1)  # [x2, x1]; sin carries rotate_half's minus
        x.mul_(cos).addcmul_(rotated, sin)


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


_ACTIVATIONS = {"silu": F.silu, "swish": F.silu, "gelu": F.gelu}


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) with gate and up fused into one matmul."""

    def __init__(self, hidden: int, intermediate: int, act: str, bias: bool) -> None:
        super().__init__()
        if act not in _ACTIVATIONS:
            raise UnsupportedModelError(f"activation {act!r} is not supported")
        self.act = _ACTIVATIONS[act]
        self.intermediate = intermediate
        self.gate_up_proj = nn.Linear(hidden, 2 * intermediate, bias=bias)
        self.down_proj = nn.Linear(intermediate, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [num_tokens, 2 * intermediate]
        h = self.act(gate_up[:, : self.intermediate]).mul_(gate_up[:, self.intermediate :])
        return self.down_proj(h)


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

    def forward(
        self,
        x: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        rotary: RotaryEmbedding,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        num_tokens = x.shape[0]
        qkv = self.qkv_proj(x)  # [num_tokens, (heads + 2 * kv_heads) * head_dim]
        rope_width = self.q_size + self.kv_size
        qk = qkv[:, :rope_width].view(num_tokens, self.heads + self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            qk[:, : self.heads] = self.q_norm(qk[:, : self.heads])
            qk[:, self.heads :] = self.k_norm(qk[:, self.heads :])
        rotary.apply_(qk, *cos_sin)
        write_kv(kv_cache, meta.slot_mapping, qkv[:, self.q_size :].view(num_tokens, 2, self.kv_heads, self.head_dim))
        out = paged_attention(qk[:, : self.heads], kv_cache, meta, self.scale)
        return self.o_proj(out)
