"""The Llama family: Llama 2/3, Mistral, Qwen2, Qwen3, SmolLM2 (one decoder, a few switches).

Differences between the members are config flags (``ArchConfig``): q/k/v bias (Qwen2),
q/k RMSNorm (Qwen3), rope scaling (Llama 3), sliding window (Mistral), tied embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from llmserve.arch.hf_config import ArchConfig
from llmserve.backends.torch.attention import AttentionMetadata
from llmserve.backends.torch.layers import (
    GatedMLP,
    PagedAttention,
    RMSNorm,
    RotaryEmbedding,
    StepContext,
    TorchOps,
)
from llmserve.backends.torch.loader import load_checkpoint


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = PagedAttention(
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            qkv_bias=cfg.qkv_bias,
            o_bias=cfg.o_bias,
            qk_norm_eps=cfg.rms_norm_eps if cfg.qk_norm else None,
        )
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, cfg.mlp_bias)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, step: StepContext, kv_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """h = x + attn(norm(x)); out = h + mlp(norm(h)), with each residual add fused into the
        next norm: returns (last sublayer output, running residual sum)."""
        if residual is None:
            residual, h = x, self.input_layernorm(x, step.ops)
        else:
            h, residual = self.input_layernorm(x, step.ops, residual)
        h, residual = self.post_attention_layernorm(self.self_attn(h, step, kv_cache), step.ops, residual)
        return self.mlp(h, step.ops), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """Decoder-only LM over a paged KV cache. Parameter names follow the HF checkpoints."""

    # Checkpoint projection -> (our fused projection, shard index): q/k/v and gate/up become
    # one matmul each.
    STACKED_PARAMS: dict[str, tuple[str, int]] = {
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }
    # Checkpoint tensors we do not need.
    IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        self.ops = TorchOps()  # the runner swaps in CpuKernels where they run
        self.fused_decode = None  # FusedDecode (decode_step.py), set by the runner where it applies
        # Row counts of the fused projections' shards, in STACKED_PARAMS order.
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.shard_sizes = {"qkv_proj": (q, kv, kv), "gate_up_proj": (cfg.intermediate_size,) * 2}

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Hidden states [num_tokens, hidden] before the final norm."""
        x = self.model.embed_tokens(input_ids)
        step = StepContext(meta, self.ops.rope_tables(self.rotary.angles(positions), x.dtype), self.ops)
        if self.fused_decode is not None and self.fused_decode.applies(meta, x.shape[0]):
            return self.fused_decode(x, step.rope, kv_caches, meta)
        residual = None
        for layer, kv_cache in zip(self.model.layers, kv_caches, strict=True):
            x, residual = layer(x, residual, step, kv_cache)
        return x + residual

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits [rows, vocab] for the given rows of ``forward``'s output."""
        normed = self.model.norm(hidden, self.ops)
        if self.fused_decode is not None:
            return self.fused_decode.logits(self.lm_head, normed).float()
        return self.lm_head(normed).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors into the (already allocated) parameters, fusing as needed."""
        skip = self.IGNORED_SUFFIXES
        if self.cfg.tie_word_embeddings:
            skip += ("lm_head.weight",)
            del self.lm_head.weight  # not a parameter of its own: tied below
        load_checkpoint(self, weights, self.STACKED_PARAMS, self.shard_sizes, skip)
        if self.cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
