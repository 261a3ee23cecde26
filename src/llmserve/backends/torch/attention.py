"""Paged attention: torch gather + SDPA (any device), with a fused C decode kernel on CPU.

KV cache, per layer: one tensor ``[num_blocks, block_size, 2, num_kv_heads, head_dim]`` (K at
index 0, V at 1), so one ``index_copy_`` stores a token's K and V together. The slot of position
p of a sequence is ``block_table[p // block_size] * block_size + p % block_size``.

The runner builds an ``AttentionMetadata`` once per step; every layer then does one KV write and
at most two attention calls (a decode group and a prefill group), never a loop over sequences.
Tokens are ordered decodes first (one new token per sequence), then prefill chunks. Decodes
go to ``DecodeGroup.kernel`` when the runner set one (``CpuKernels.paged_decode`` on CPU, the
Triton kernel on CUDA, both reading K/V straight from the blocks), and prefill chunks to
``PrefillGroup.kernel`` (Triton, CUDA); otherwise each sequence's blocks are gathered with one
``index_select`` into a padded [B, ctx] view and attended with a causal + length mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class DecodeGroup:
    """Sequences with one new token each: the first ``num_seqs`` tokens of the step."""

    num_seqs: int
    block_ids: torch.Tensor  # [num_seqs * max_blocks] flattened padded block tables
    max_blocks: int
    context_lens: torch.Tensor  # [num_seqs]
    # [num_seqs, 1, 1, max_blocks * block_size] bool, True = attend; None when ``kernel`` runs.
    mask: torch.Tensor | None
    # kernel(q, kv_cache, group, scale) -> [B, H * D] (CpuKernels.paged_decode), or None for torch.
    kernel: Any = None
    window: int | None = None


@dataclass(slots=True)
class PrefillGroup:
    """Sequences with several new tokens (prompt chunks), after the decode tokens."""

    num_seqs: int
    max_query: int
    block_ids: torch.Tensor  # [num_seqs * max_blocks]
    max_blocks: int
    # [num_seqs, 1, max_query, max_blocks * block_size] bool, True = attend; None when ``kernel`` runs.
    mask: torch.Tensor | None
    # Rows of the group's tokens to gather into a padded [num_seqs * max_query] layout and the
    # padded rows to keep afterwards; None when there is a single sequence (no padding).
    pad_index: torch.Tensor | None = None
    unpad_index: torch.Tensor | None = None
    # kernel(q, kv_cache, group, scale) -> [tokens, H * D] over packed (unpadded) queries
    # (TritonOps.prefill), with each sequence's first row in q ([num_seqs + 1]) and context length.
    kernel: Any = None
    query_starts: torch.Tensor | None = None
    context_lens: torch.Tensor | None = None
    window: int | None = None


@dataclass(slots=True)
class AttentionMetadata:
    """Everything attention needs for one step, shared by all layers."""

    slot_mapping: torch.Tensor  # [num_tokens] cache slot of each new token
    decode: DecodeGroup | None
    prefill: PrefillGroup | None


def build_masks(
    context_lens: torch.Tensor, query_lens: torch.Tensor, max_query: int, ctx: int, window: int | None
) -> torch.Tensor:
    """Causal + length (+ sliding window) mask [B, 1, max_query, ctx] for queries at the end of
    each sequence's context: query i of sequence b sits at position ctx_len - q_len + i."""
    key_pos = torch.arange(ctx, device=context_lens.device)
    query_pos = (context_lens - query_lens)[:, None] + torch.arange(max_query, device=context_lens.device)
    query_pos = torch.minimum(query_pos, (context_lens - 1)[:, None])  # padded rows repeat the last
    mask = key_pos[None, None, :] <= query_pos[:, :, None]
    if window is not None:
        mask &= key_pos[None, None, :] > query_pos[:, :, None] - window
    return mask[:, None]


def write_kv(kv_cache: torch.Tensor, slot_mapping: torch.Tensor, kv: torch.Tensor) -> None:
    """Store new tokens' K/V ([num_tokens, 2, kv_heads, head_dim]) at their slots."""
    flat = kv_cache.view(-1, *kv_cache.shape[2:])
    flat.index_copy_(0, slot_mapping, kv)


def paged_attention(
    q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """Attention of new queries ``q`` [num_tokens, heads, head_dim] over the paged cache (which
    already holds the new tokens' K/V). Returns [num_tokens, heads * head_dim]."""
    outputs = []
    if meta.decode is not None:
        outputs.append(_decode(q[: meta.decode.num_seqs], kv_cache, meta.decode, scale))
    if meta.prefill is not None:
        start = meta.decode.num_seqs if meta.decode is not None else 0
        outputs.append(_prefill(q[start:], kv_cache, meta.prefill, scale))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _gather(
    kv_cache: torch.Tensor, block_ids: torch.Tensor, num_seqs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    # index_select is several times faster than advanced indexing on CPU.
    _, block_size, _, kv_heads, head_dim = kv_cache.shape
    kv = kv_cache.index_select(0, block_ids).view(num_seqs, -1, 2, kv_heads, head_dim)
    return kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # [B, kv_heads, ctx, head_dim]


def _decode(q: torch.Tensor, kv_cache: torch.Tensor, group: DecodeGroup, scale: float) -> torch.Tensor:
    if group.kernel is not None:
        return group.kernel(q, kv_cache, group, scale)
    num_seqs, heads, head_dim = q.shape
    kv_heads = kv_cache.shape[3]
    k, v = _gather(kv_cache, group.block_ids, num_seqs)
    # Fold the query heads sharing a KV head into the query-length axis: plain attention, no
    # KV expansion for GQA. [B, kv_heads, heads_per_kv, head_dim]
    q = q.reshape(num_seqs, kv_heads, heads // kv_heads, head_dim)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=group.mask, scale=scale)
    return out.reshape(num_seqs, heads * head_dim)


def _prefill(q: torch.Tensor, kv_cache: torch.Tensor, group: PrefillGroup, scale: float) -> torch.Tensor:
    if group.kernel is not None:
        return group.kernel(q, kv_cache, group, scale)
    num_tokens, heads, head_dim = q.shape
    k, v = _gather(kv_cache, group.block_ids, group.num_seqs)
    if group.pad_index is not None:
        q = q.index_select(0, group.pad_index)
    q = q.view(group.num_seqs, group.max_query, heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=group.mask, scale=scale, enable_gqa=True)
    out = out.transpose(1, 2).reshape(group.num_seqs * group.max_query, heads * head_dim)
    if group.unpad_index is not None:
        out = out.index_select(0, group.unpad_index)
    return out
