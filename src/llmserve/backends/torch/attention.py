"""Paged attention: torch gather + SDPA (any device), with a fused C decode kernel on CPU.

KV cache, per layer: one tensor ``[num_blocks, block_size, 2, num_kv_heads, head_dim]`` (K at
index 0, V at 1), so one ``index_copy_`` stores a token's K and V together. The slot of position
p of a sequence is ``block_table[p // block_size] * block_size + p % block_size``.

The runner builds an ``AttentionMetadata`` once per step; every layer then does one KV write and
at most two attention calls (a decode group and a prefill group), never a loop over sequences.
Tokens are ordered decodes first (one new token per sequence), then prefill chunks. Decodes
go to ``DecodeGroup.kernel`` when the runner set one (``CpuKernels.paged_decode`` on CPU, the
Triton kernel on CUDA, both reading K/V straight from the blocks), and prefill chunks to
``PrefillGroup.kernel`` (Triton, CUDA). On CPU a prefill chunk attends without a mask tensor
(``PrefillGroup.split``): its queries see the cached prefix in full and the chunk itself causally,
two flash-attention calls merged by their log-sum-exp. Otherwise (sliding window, other devices)
each sequence's blocks are gathered with one ``index_select`` into a padded [B, ctx] view and
attended with a dense causal + length mask.
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
    # Mask-free CPU path (``mask`` is None): for the sequences with a cached prefix, their indices
    # in the group, prefix lengths and, when those differ, a key-padding mask [n, 1, 1, max_prefix].
    split: bool = False
    prefix_rows: torch.Tensor | None = None
    prefix_lens: list[int] | None = None
    prefix_mask: torch.Tensor | None = None


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
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    new_kv: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of new queries ``q`` [num_tokens, heads, head_dim] over the paged cache (which
    already holds the new tokens' K/V, also passed as ``new_kv`` [num_tokens, 2, kv_heads,
    head_dim] when at hand). Returns [num_tokens, heads * head_dim]."""
    outputs = []
    if meta.decode is not None:
        outputs.append(_decode(q[: meta.decode.num_seqs], kv_cache, meta.decode, scale))
    if meta.prefill is not None:
        start = meta.decode.num_seqs if meta.decode is not None else 0
        if meta.prefill.split:
            if new_kv is None:
                new_kv = kv_cache.view(-1, *kv_cache.shape[2:]).index_select(0, meta.slot_mapping)
            outputs.append(_prefill_split(q[start:], new_kv[start:], kv_cache, meta.prefill, scale))
        else:
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


_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def split_supported(device: torch.device) -> bool:
    """Whether ``_prefill_split`` runs here: torch's CPU flash attention, which returns the
    log-sum-exp the two halves are merged with."""
    return device.type == "cpu" and _flash is not None


def _prefill_split(
    q: torch.Tensor, new_kv: torch.Tensor, kv_cache: torch.Tensor, group: PrefillGroup, scale: float
) -> torch.Tensor:
    """Prefill chunks without a [q, ctx] mask: each chunk attends causally to itself (keys from
    ``new_kv``, square, so torch's top-left ``is_causal`` is right), and the sequences with a
    cached prefix also attend to all of it (no mask; a key-padding mask only when prefixes of
    different lengths share the call). Padded rows of several chunks see only real keys before
    them, so their garbage never reaches a real row and is dropped at the end."""
    num_tokens, heads, head_dim = q.shape
    kv_heads, size, mq = new_kv.shape[2], group.num_seqs, group.max_query
    if group.pad_index is not None:
        q, new_kv = q.index_select(0, group.pad_index), new_kv.index_select(0, group.pad_index)
    q = q.view(size, mq, heads, head_dim)
    new_kv = new_kv.view(size, mq, 2, kv_heads, head_dim)
    k, v = new_kv[:, :, 0].transpose(1, 2), new_kv[:, :, 1].transpose(1, 2)  # [B, kv_heads, mq, D]
    out, lse = _flash(q.transpose(1, 2), k, v, is_causal=True, scale=scale)  # out: [B, mq, H, D] memory
    out = out.transpose(1, 2)
    if group.prefix_lens:
        out = _merge_prefix(q, out, lse, kv_cache, group, scale)
    out = out.reshape(size * mq, heads * head_dim)
    if group.unpad_index is not None:
        out = out.index_select(0, group.unpad_index)
    return out


def _merge_prefix(
    q: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    kv_cache: torch.Tensor,
    group: PrefillGroup,
    scale: float,
) -> torch.Tensor:
    """``out`` [B, mq, H, D] (attention over each chunk) merged with attention over the cached
    prefix of the sequences in ``group.prefix_rows``: out = o_chunk + sigmoid(lse_prefix -
    lse_chunk) * (o_prefix - o_chunk), the softmax over both key sets."""
    size, mq, heads, head_dim = q.shape
    block_size, kv_heads = kv_cache.shape[1], kv_cache.shape[3]
    rows, n = group.prefix_rows, len(group.prefix_lens)
    longest = max(group.prefix_lens)
    blocks = -(-longest // block_size)
    block_ids = group.block_ids.view(size, group.max_blocks)[:, :blocks]
    if n < size:
        q, block_ids = q.index_select(0, rows), block_ids.index_select(0, rows)
    k, v = _gather(kv_cache, block_ids.reshape(-1), n)
    k, v = k[:, :, :longest], v[:, :, :longest]
    # The query heads of one KV head folded into the query axis: each K/V row is read once.
    group_size = heads // kv_heads
    qf = q.view(n, mq, kv_heads, group_size, head_dim).transpose(1, 2).reshape(n, kv_heads, -1, head_dim)
    mask = group.prefix_mask
    if mask is not None:
        mask = torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(~mask, float("-inf"))
    o_pre, lse_pre = _flash(qf, k, v, attn_mask=mask, scale=scale)  # [n, kv_heads, mq * G, D]
    o_pre = o_pre.view(n, kv_heads, mq, group_size, head_dim).transpose(1, 2).reshape(n, mq, heads, head_dim)
    lse_pre = lse_pre.view(n, kv_heads, mq, group_size).transpose(1, 2).reshape(n, mq, heads)
    o_chunk, lse_chunk = out, lse.transpose(1, 2)  # [B, mq, H, D], [B, mq, H]
    if n < size:
        o_chunk, lse_chunk = o_chunk.index_select(0, rows), lse_chunk.index_select(0, rows)
    weight = torch.sigmoid(lse_pre - lse_chunk)[..., None]
    merged = (o_chunk.float() + weight * (o_pre.float() - o_chunk.float())).to(out.dtype)
    if n == size:
        return merged
    return out.index_copy(0, rows, merged)
