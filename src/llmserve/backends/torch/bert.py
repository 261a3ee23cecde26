"""BERT encoder (all-MiniLM and friends) with mean / CLS / max / last-token pooling.

Post-norm transformer: ``h = LN(x + attn(x)); out = LN(h + ffn(h))``. Padded batches use a
key-padding mask; pooling ignores padded positions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from llmserve.arch.hf_config import ArchConfig
from llmserve.arch.registry import UnsupportedModelError
from llmserve.backends.torch.loader import load_checkpoint

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


class BertLayer(nn.Module):
    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        hidden = cfg.hidden_size
        self.heads, self.head_dim = cfg.num_heads, hidden // cfg.num_heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(hidden, cfg.intermediate_size)
        self.out = nn.Linear(cfg.intermediate_size, hidden)
        self.out_norm = nn.LayerNorm(hidden, eps=cfg.layer_norm_eps)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)  # [B, heads, L, d]
        x = self.attn_norm(x + self.attn_out(attn.transpose(1, 2).reshape(batch, length, hidden)))
        return self.out_norm(x + self.out(self.act(self.intermediate(x))))


class BertModel(nn.Module):
    """Encoder returning pooled sentence embeddings. Parameter names follow HF's BertModel,
    except q/k/v, which load into one fused projection."""

    # Checkpoint name -> ours, applied in order (HF nests deeper than we need).
    RENAMES = (
        (r"^(bert\.)?embeddings\.LayerNorm\.", "embed_norm."),
        (r"^(bert\.)?embeddings\.", ""),
        (r"^(bert\.)?encoder\.layer\.", "layers."),
        (r"\.attention\.self\.", "."),
        (r"\.attention\.output\.dense\.", ".attn_out."),
        (r"\.attention\.output\.LayerNorm\.", ".attn_norm."),
        (r"\.intermediate\.dense\.", ".intermediate."),
        (r"\.output\.dense\.", ".out."),
        (r"\.output\.LayerNorm\.", ".out_norm."),
    )
    STACKED_PARAMS = {"query": ("qkv", 0), "key": ("qkv", 1), "value": ("qkv", 2)}
    IGNORED_SUFFIXES = ("position_ids", "pooler.dense.weight", "pooler.dense.bias")

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        if cfg.hidden_act not in _ACTIVATIONS:
            raise UnsupportedModelError(f"activation {cfg.hidden_act!r} is not supported")
        self.cfg = cfg
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(max(cfg.type_vocab_size, 1), cfg.hidden_size)
        self.embed_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_layers))
        self.shard_sizes = {"qkv": (cfg.hidden_size,) * 3}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
        """Pooled (not normalised) embeddings [B, hidden] of padded ``input_ids`` [B, L]."""
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
        x = self.embed_norm(x + self.token_type_embeddings.weight[0])
        keep = attention_mask.bool()
        mask = keep[:, None, None, :]  # [B, 1, 1, L] key padding
        for layer in self.layers:
            x = layer(x, mask)
        if pooling == "cls":
            return x[:, 0]
        if pooling == "last":
            return x[torch.arange(x.shape[0]), keep.sum(1) - 1]
        if pooling == "max":
            return x.masked_fill(~keep[..., None], float("-inf")).amax(1)
        weights = keep[..., None].to(x.dtype)
        return (x * weights).sum(1) / weights.sum(1)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        renamed = ((self._rename(name), tensor) for name, tensor in weights)
        load_checkpoint(self, renamed, self.STACKED_PARAMS, self.shard_sizes, self.IGNORED_SUFFIXES)

    def _rename(self, name: str) -> str:
        for pattern, replacement in self.RENAMES:
            name = re.sub(pattern, replacement, name)
        return name
