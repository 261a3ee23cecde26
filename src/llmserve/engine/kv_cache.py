"""Paged KV block manager with automatic prefix caching. Pure Python: it hands out block ids, the
backend owns the tensors.

A full block that has been computed is registered under a hash chained over its parent's hash and
its token ids, so one hash names a whole prefix. Blocks whose reference count drops to zero stay
in the cache (still findable) and are evicted least-recently-freed first, only when a fresh block
is needed and no never-cached free block is left.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmserve.engine.request import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None  # set while the block is registered in the prefix cache


class BlockManager:
    """A pool of ``num_blocks`` KV blocks of ``block_size`` tokens; sequences hold block tables.

    ``num_free_blocks`` counts blocks nobody references, cached ones included (they are reusable).
    ``prefix_cache_queries`` / ``prefix_cache_hits`` count prompt tokens looked up / found.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free_plain: list[int] = list(range(num_blocks - 1, -1, -1))  # stack, block 0 on top
        self._free_cached: OrderedDict[int, None] = OrderedDict()  # least recently freed first
        self._cache: dict[bytes, int] = {}  # hash -> block id
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    # -- accounting ---------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_plain) + len(self._free_cached)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by some sequence."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cache)

    def ref_count(self, block_id: int) -> int:
        return self.blocks[block_id].ref_count

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def record_query(self, num_tokens: int, num_hit_tokens: int) -> None:
        self.prefix_cache_queries += num_tokens
        self.prefix_cache_hits += num_hit_tokens

    # -- prefix cache -------------------------------------------------------------------------

    def block_hashes(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """Hashes of the sequence's first ``num_blocks`` full blocks of tokens (computed lazily)."""
        hashes, bs = seq.block_hashes, self.block_size
        while len(hashes) < num_blocks:
            i = len(hashes)
            digest = hashlib.sha256(hashes[i - 1] if i else b"")
            digest.update(array("q", seq.token_ids(i * bs, (i + 1) * bs)).tobytes())
            hashes.append(digest.digest())
        return hashes

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding a prefix of ``seq``; never the block of its last token, so at
        least one token is left to compute (the step that samples needs its logits)."""
        if not self.enable_prefix_caching:
            return []
        limit = (seq.num_tokens - 1) // self.block_size
        found = []
        for h in self.block_hashes(seq, limit):
            block_id = self._cache.get(h)
            if block_id is None:
                break
            found.append(block_id)
        return found

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the sequence's newly computed full blocks (call after its tokens are computed)."""
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.block_size
        if num_full <= seq.num_registered_blocks:
            return
        hashes = self.block_hashes(seq, num_full)
        for i in range(seq.num_registered_blocks, num_full):
            block = self.blocks[seq.block_table[i]]
            # A block computed twice by concurrent requests stays unregistered (plain) here.
            if block.hash is None and hashes[i] not in self._cache:
                block.hash = hashes[i]
                self._cache[hashes[i]] = block.block_id
        seq.num_registered_blocks = num_full

    def reset_prefix_cache(self) -> int:
        """Forget every cached block nobody uses; return how many were dropped."""
        dropped = 0
        while self._free_cached:
            block_id, _ = self._free_cached.popitem(last=False)
            self._uncache(self.blocks[block_id])
            self._free_plain.append(block_id)
            dropped += 1
        return dropped

    # -- allocation ---------------------------------------------------------------------------

    def num_blocks_needed(self, shared: list[int], num_tokens: int) -> int:
        """Free blocks an allocation of ``shared`` + fresh blocks up to ``num_tokens`` consumes."""
        reused = sum(1 for b in shared if self.blocks[b].ref_count == 0)
        return reused + max(0, self.blocks_for(num_tokens) - len(shared))

    def can_allocate(self, shared: list[int], num_tokens: int) -> bool:
        return self.num_blocks_needed(shared, num_tokens) <= self.num_free_blocks

    def allocate(self, seq: Sequence, shared: list[int], num_tokens: int) -> None:
        """Give a sequence without blocks the ``shared`` blocks (prefix-cache hits or a sibling's
        prompt blocks, ref-counted) and fresh blocks up to ``num_tokens`` tokens."""
        if seq.block_table:
            raise ValueError(f"seq {seq.seq_id} already holds blocks")
        if not self.can_allocate(shared, num_tokens):
            raise RuntimeError("not enough free KV blocks; check can_allocate first")
        for block_id in shared:  # take the hits first so evicting for fresh blocks cannot drop them
            self._take(block_id)
        seq.block_table = list(shared)
        seq.num_registered_blocks = len(shared)
        self._append_fresh(seq.block_table, self.blocks_for(num_tokens) - len(shared))

    def grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Extend the block table to hold ``num_tokens`` tokens; False (no change) if blocks run out."""
        need = self.blocks_for(num_tokens) - len(seq.block_table)
        if need <= 0:
            return True
        if need > self.num_free_blocks:
            return False
        self._append_fresh(seq.block_table, need)
        return True

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references. Its tail blocks go first in eviction order: the head
        blocks are the ones other prompts are likely to share."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            if block.ref_count <= 0:
                raise RuntimeError(f"block {block_id} freed more often than taken")
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.hash is not None:
                    self._free_cached[block_id] = None
                else:
                    self._free_plain.append(block_id)
        seq.block_table = []
        seq.num_registered_blocks = 0

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            if block.hash is not None:
                del self._free_cached[block_id]
            else:
                self._free_plain.remove(block_id)
        block.ref_count += 1

    def _append_fresh(self, table: list[int], count: int) -> None:
        for _ in range(count):
            if self._free_plain:
                block_id = self._free_plain.pop()
            else:  # evict the least recently freed cached block
                block_id, _ = self._free_cached.popitem(last=False)
                self._uncache(self.blocks[block_id])
            self.blocks[block_id].ref_count = 1
            table.append(block_id)

    def _uncache(self, block: Block) -> None:
        if block.hash is not None and self._cache.get(block.hash) == block.block_id:
            del self._cache[block.hash]
        block.hash = None
