"""Attention metadata for Whisper's decoder on the paged KV cache.

A Whisper step is either a batch of decodes (one new token per sequence, read through the decode
kernel where there is one) or one sequence's prompt; the block tables come from the engine's
block manager (``TranscriptionService``), which grows them before each step.
"""

from __future__ import annotations

import torch

from llmserve.backends.torch.attention import AttentionMetadata, DecodeGroup, PrefillGroup, build_masks
from llmserve.backends.torch.cpu_kernels import CpuKernels


def decode_kernel(device: torch.device, dtype: torch.dtype, heads: int, head_dim: int):
    """The fused CPU decode kernel for this device and dtype, or None (torch's gather + SDPA)."""
    kernels = CpuKernels.load(dtype, device)
    if kernels is not None and kernels.supports_decode(heads, heads, head_dim):
        return kernels.paged_decode
    return None


def _slot(table: list[int], pos: int, block_size: int) -> int:
    return table[pos // block_size] * block_size + pos % block_size


def _padded(tables: list[list[int]], lengths: list[int], block_size: int) -> tuple[list[int], int]:
    max_blocks = -(-max(lengths) // block_size)
    flat: list[int] = []
    for table, length in zip(tables, lengths, strict=True):
        if -(-length // block_size) > len(table):
            raise ValueError(f"block table of {len(table)} blocks is too short for {length} tokens")
        flat += table[:max_blocks] + [0] * (max_blocks - min(len(table), max_blocks))  # pads are masked
    return flat, max_blocks


def step_metadata(
    tables: list[list[int]], starts: list[int], query_len: int, block_size: int, device, kernel=None
) -> tuple[torch.Tensor, AttentionMetadata]:
    """Positions [B, T] and the metadata for ``query_len`` new tokens of each sequence after its
    ``starts`` cached ones: decodes (``query_len`` 1) or a single prompt (one table)."""
    if query_len != 1 and len(tables) != 1:
        raise ValueError("a Whisper step is decodes or one prompt")
    lengths = [start + query_len for start in starts]
    positions = [list(range(start, start + query_len)) for start in starts]
    slots = [_slot(table, p, block_size) for table, row in zip(tables, positions, strict=True) for p in row]
    flat, max_blocks = _padded(tables, lengths, block_size)

    def tensor(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)

    ctx_lens = tensor(lengths)
    decode = prefill = None
    if query_len == 1:
        mask = None
        if kernel is None:
            ones = torch.ones(len(tables), dtype=torch.long, device=ctx_lens.device)
            mask = build_masks(ctx_lens, ones, 1, max_blocks * block_size, None)
        decode = DecodeGroup(len(tables), tensor(flat), max_blocks, ctx_lens, mask, kernel)
    else:
        query = torch.tensor([query_len])
        mask = build_masks(torch.tensor(lengths), query, query_len, max_blocks * block_size, None)
        prefill = PrefillGroup(1, query_len, tensor(flat), max_blocks, mask.to(device))
    return tensor(positions), AttentionMetadata(tensor(slots), decode, prefill)


def copy_blocks(kv_caches: list[torch.Tensor], pairs: list[tuple[int, int]]) -> None:
    """Copy blocks (source, destination) in every layer's cache: a candidate's own copy of the
    partly filled last block of a prompt it shares with its siblings."""
    if not pairs:
        return
    src = torch.tensor([s for s, _ in pairs], device=kv_caches[0].device)
    dst = torch.tensor([d for _, d in pairs], device=kv_caches[0].device)
    for cache in kv_caches:
        cache.index_copy_(0, dst, cache.index_select(0, src))
