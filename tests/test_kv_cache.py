"""BlockManager: allocation, ref counts, hash-chained prefix cache, LRU eviction."""

from __future__ import annotations

import pytest

from llmserve.engine.kv_cache import BlockManager
from llmserve.engine.request import Request, Sequence
from llmserve.engine.sampling import SamplingParams


def seq(tokens: list[int], rid: str = "r") -> Sequence:
    return Request.create(rid, tokens, SamplingParams()).seqs[0]


def compute(blocks: BlockManager, s: Sequence, num_tokens: int | None = None) -> None:
    """Allocate from the cache and pretend the backend computed the tokens."""
    shared = blocks.match_prefix(s)
    num_tokens = s.num_tokens if num_tokens is None else num_tokens
    blocks.allocate(s, shared, num_tokens)
    s.num_computed_tokens = num_tokens
    blocks.cache_full_blocks(s)


def test_allocate_and_free_restore_the_pool() -> None:
    blocks = BlockManager(8, 4)
    a, b = seq(list(range(10))), seq(list(range(100, 105)))
    compute(blocks, a)
    compute(blocks, b)
    assert len(a.block_table) == 3 and len(b.block_table) == 2
    assert not set(a.block_table) & set(b.block_table)
    assert blocks.num_free_blocks == 3
    assert blocks.usage == pytest.approx(5 / 8)
    blocks.free(a)
    blocks.free(b)
    assert blocks.num_free_blocks == 8 and blocks.usage == 0.0
    assert a.block_table == [] and all(blocks.ref_count(i) == 0 for i in range(8))


def test_grow_fails_without_free_blocks_and_changes_nothing() -> None:
    blocks = BlockManager(2, 4)
    a = seq(list(range(8)))
    compute(blocks, a)
    assert blocks.grow(a, 8)  # already covered
    assert not blocks.grow(a, 9)
    assert len(a.block_table) == 2 and blocks.num_free_blocks == 0


def test_prefix_hit_reuses_blocks_but_never_the_last_tokens_block() -> None:
    blocks = BlockManager(16, 4)
    a = seq(list(range(10)))  # two full blocks + 2 tokens
    compute(blocks, a)
    # Same first 8 tokens: both full blocks are found and shared with the running sequence.
    b = seq(list(range(8)) + [50, 51, 52])
    hits = blocks.match_prefix(b)
    assert hits == a.block_table[:2]
    blocks.allocate(b, hits, b.num_tokens)
    assert blocks.ref_count(hits[0]) == 2 and b.block_table[:2] == hits
    assert b.block_table[2] not in a.block_table
    # A prompt of exactly two blocks may reuse only the first: its last token must be computed.
    c = seq(list(range(8)))
    assert blocks.match_prefix(c) == a.block_table[:1]
    # A single-token prompt never hits.
    assert blocks.match_prefix(seq([0])) == []


def test_hash_is_chained_over_the_parent() -> None:
    blocks = BlockManager(16, 4)
    a = seq([1, 2, 3, 4, 5, 6, 7, 8, 9])
    compute(blocks, a)
    # Same second block, different first block: no hit at all.
    assert blocks.match_prefix(seq([0, 2, 3, 4, 5, 6, 7, 8, 9])) == []
    # Same first block, different second: one block.
    assert blocks.match_prefix(seq([1, 2, 3, 4, 5, 6, 7, 0, 9])) == a.block_table[:1]


def test_only_computed_blocks_are_cached() -> None:
    blocks = BlockManager(16, 4)
    a = seq(list(range(12)))
    blocks.allocate(a, [], 12)
    a.num_computed_tokens = 5  # a chunk: one full block computed
    blocks.cache_full_blocks(a)
    assert blocks.match_prefix(seq(list(range(12)), "b")) == a.block_table[:1]
    a.num_computed_tokens = 12
    blocks.cache_full_blocks(a)
    assert blocks.match_prefix(seq(list(range(12)) + [1], "c")) == a.block_table


def test_freed_blocks_stay_cached_and_count_as_free() -> None:
    blocks = BlockManager(4, 4)
    a = seq(list(range(9)))
    compute(blocks, a)
    table = list(a.block_table)
    blocks.free(a)
    assert blocks.num_free_blocks == 4 and blocks.num_cached_blocks == 2
    b = seq(list(range(9)), "b")
    hits = blocks.match_prefix(b)
    assert hits == table[:2]
    blocks.allocate(b, hits, b.num_tokens)
    assert blocks.num_free_blocks == 1 and blocks.ref_count(table[0]) == 1


def test_eviction_is_lru_and_tail_blocks_go_first() -> None:
    blocks = BlockManager(6, 2)
    a = seq([1, 2, 3, 4, 5])  # blocks a0 a1 cached, a2 partial
    compute(blocks, a)
    b = seq([7, 8, 9], "b")  # b0 cached
    compute(blocks, b)
    a_table, b_table = list(a.block_table), list(b.block_table)
    blocks.free(a)  # freed first: least recently used
    blocks.free(b)
    assert blocks.num_free_blocks == 6 and blocks.num_cached_blocks == 3
    # Three plain blocks (a2, b1, the unused one) are used before any cached block is evicted.
    c = seq([20, 21, 22, 23, 24, 25], "c")
    blocks.allocate(c, [], 6)
    assert blocks.num_cached_blocks == 3
    assert not set(c.block_table) & {a_table[0], a_table[1], b_table[0]}
    # One more block evicts A's tail block (a1) first, then a0; B's block survives longest.
    d = seq([30, 31], "d")
    blocks.allocate(d, [], 2)
    assert d.block_table == [a_table[1]]
    assert blocks.match_prefix(seq([1, 2, 3, 4, 5], "a2")) == a_table[:1]
    e = seq([40, 41], "e")
    blocks.allocate(e, [], 2)
    assert e.block_table == [a_table[0]]
    assert blocks.match_prefix(seq([1, 2, 3, 4, 5], "a3")) == []
    assert blocks.match_prefix(seq([7, 8, 9], "b2")) == b_table[:1]


def test_hit_refreshes_lru_position() -> None:
    blocks = BlockManager(3, 2)
    a = seq([1, 2, 3])
    compute(blocks, a)
    a_block = a.block_table[0]
    blocks.free(a)
    b = seq([5, 6, 7], "b")
    compute(blocks, b)
    b_block = b.block_table[0]
    blocks.free(b)  # cached queue: a's block (older), b's block
    c = seq([1, 2, 8], "c")  # reuses a's block, which becomes the most recently freed again
    compute(blocks, c)
    assert c.block_table[0] == a_block
    blocks.free(c)
    d = seq([9, 9, 9, 9], "d")
    blocks.allocate(d, [], 4)  # one plain block, then evicts the least recently used: b's
    assert b_block in d.block_table and a_block not in d.block_table
    assert blocks.match_prefix(seq([1, 2, 0], "e")) == [a_block]
    assert blocks.match_prefix(seq([5, 6, 0], "f")) == []


def test_prefix_caching_disabled() -> None:
    blocks = BlockManager(8, 4, enable_prefix_caching=False)
    a = seq(list(range(9)))
    compute(blocks, a)
    blocks.free(a)
    assert blocks.num_cached_blocks == 0
    assert blocks.match_prefix(seq(list(range(9)), "b")) == []


def test_duplicate_blocks_are_not_registered_twice() -> None:
    blocks = BlockManager(8, 2)
    a, b = seq([1, 2, 3]), seq([1, 2, 3], "b")
    blocks.allocate(a, [], 3)
    blocks.allocate(b, [], 3)  # computed concurrently, before either was cached
    a.num_computed_tokens = b.num_computed_tokens = 3
    blocks.cache_full_blocks(a)
    blocks.cache_full_blocks(b)
    assert blocks.num_cached_blocks == 1
    first = a.block_table[0]
    blocks.free(a)
    blocks.free(b)
    assert blocks.num_free_blocks == 8
    assert blocks.match_prefix(seq([1, 2, 3], "c")) == [first]


def test_reset_prefix_cache() -> None:
    blocks = BlockManager(4, 2)
    a = seq([1, 2, 3, 4, 5])
    compute(blocks, a)
    blocks.free(a)
    assert blocks.reset_prefix_cache() == 2
    assert blocks.num_cached_blocks == 0 and blocks.num_free_blocks == 4
    assert blocks.match_prefix(seq([1, 2, 3, 4, 5], "b")) == []


def test_allocate_checks_capacity() -> None:
    blocks = BlockManager(2, 4)
    a = seq(list(range(12)))
    assert not blocks.can_allocate([], 12)
    with pytest.raises(RuntimeError):
        blocks.allocate(a, [], 12)
    assert blocks.num_free_blocks == 2 and a.block_table == []
    with pytest.raises(ValueError):
        BlockManager(0, 4)
