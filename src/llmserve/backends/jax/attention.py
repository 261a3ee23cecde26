"""Paged attention in JAX: a functional KV write and a chunked online-softmax read.

KV cache, per layer: K as ``[num_blocks, kv_heads, head_dim, block_size]`` and V as
``[num_blocks, kv_heads, block_size, head_dim]``. These layouts make the gathered keys and
values the right-hand sides of plain ``[m, k] @ [k, n]`` matmuls (XLA:CPU runs the transposed
forms several times slower). New tokens' K/V are scattered at (slot // block_size,
slot % block_size); padding tokens carry the out-of-range slot ``num_blocks * block_size``
and are dropped.

Queries come in *tiles*: ``[tiles, tile_len, heads, head_dim]``, every tile belonging to one
sequence (a decode is a tile of one query; a prefill chunk is cut into fixed-size tiles). Each
tile has its sequence's block table and the position of each query (-1 for padding). Keys are
read through the block table in chunks of ``chunk_blocks`` blocks by a ``fori_loop`` whose trip
count is a traced scalar, so one compiled step serves every context length: the context is not
part of the compile key, only the (tiles, tile_len) shape is.
"""

from __future__ import annotations

from typing import Any

# A large finite negative instead of -inf: a chunk (or a padding query) with no visible key
# then gives finite, later discarded values instead of NaN (exp(-inf - -inf)).
MASK_VALUE = -1e30


def write_kv(k_cache: Any, v_cache: Any, slots: Any, k: Any, v: Any) -> tuple[Any, Any]:
    """Store K and V ([tokens, kv_heads, head_dim]) at ``slots``; returns the updated caches."""
    block_size = k_cache.shape[-1]
    blocks, offsets = slots // block_size, slots % block_size
    k_cache = k_cache.at[blocks, :, :, offsets].set(k.astype(k_cache.dtype), mode="drop")
    v_cache = v_cache.at[blocks, :, offsets, :].set(v.astype(v_cache.dtype), mode="drop")
    return k_cache, v_cache


def paged_attention(
    q: Any,
    k_cache: Any,
    v_cache: Any,
    tables: Any,
    q_pos: Any,
    num_chunks: Any,
    *,
    chunk_blocks: int,
    scale: float,
    window: int | None = None,
) -> Any:
    """Causal attention of query tiles over their sequences' paged K/V.

    q: [tiles, tile_len, heads, head_dim]; tables: [tiles, table_width] block ids (a multiple of
    ``chunk_blocks`` wide; padding entries may be any valid block); q_pos: [tiles, tile_len]
    query positions, -1 for padding; num_chunks: int32 scalar, chunks of keys to visit (enough
    for the largest position in the batch). Returns [tiles * tile_len, heads * head_dim].
    """
    import jax
    import jax.numpy as jnp

    tiles, tile_len, heads, head_dim = q.shape
    _, kv_heads, _, block_size = k_cache.shape
    group = heads // kv_heads
    rows = group * tile_len  # query rows per KV head
    span = chunk_blocks * block_size
    # [tiles, kv_heads, group * tile_len, head_dim]: the query heads sharing a KV head stacked.
    qg = (q.astype(jnp.float32) * scale).reshape(tiles, tile_len, kv_heads, group, head_dim)
    qg = qg.transpose(0, 2, 3, 1, 4).reshape(tiles, kv_heads, rows, head_dim).astype(k_cache.dtype)
    offsets = jnp.arange(span, dtype=jnp.int32)

    def visit(j, carry):
        top, denom, acc = carry
        blocks = jax.lax.dynamic_slice_in_dim(tables, j * chunk_blocks, chunk_blocks, axis=1)
        # [tiles, chunk, kvh, d, bs] -> [tiles, kvh, d, span]; V likewise to [tiles, kvh, span, d]
        k = k_cache[blocks].transpose(0, 2, 3, 1, 4).reshape(tiles, kv_heads, head_dim, span)
        v = v_cache[blocks].transpose(0, 2, 1, 3, 4).reshape(tiles, kv_heads, span, head_dim)
        s = jnp.einsum("nkmd,nkdc->nkmc", qg, k, preferred_element_type=jnp.float32)
        key_pos = j * span + offsets
        visible = key_pos[None, None, :] <= q_pos[:, :, None]  # [tiles, tile_len, span]
        if window is not None:
            visible &= key_pos[None, None, :] > q_pos[:, :, None] - window
        s = s.reshape(tiles, kv_heads, group, tile_len, span)
        s = jnp.where(visible[:, None, None], s, MASK_VALUE).reshape(tiles, kv_heads, rows, span)
        new_top = jnp.maximum(top, s.max(axis=-1))
        correction = jnp.exp(top - new_top)
        p = jnp.exp(s - new_top[..., None])
        denom = denom * correction + p.sum(axis=-1)
        pv = jnp.einsum("nkmc,nkcd->nkmd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        acc = acc * correction[..., None] + pv
        return new_top, denom, acc

    shape = (tiles, kv_heads, rows)
    init = (
        jnp.full(shape, MASK_VALUE, jnp.float32),
        jnp.zeros(shape, jnp.float32),
        jnp.zeros((*shape, head_dim), jnp.float32),
    )
    _, denom, acc = jax.lax.fori_loop(0, num_chunks, visit, init)
    out = acc / jnp.maximum(denom, 1e-30)[..., None]  # [tiles, kv_heads, group * tile_len, head_dim]
    out = out.reshape(tiles, kv_heads, group, tile_len, head_dim).transpose(0, 3, 1, 2, 4)
    return out.reshape(tiles * tile_len, heads * head_dim).astype(q.dtype)
