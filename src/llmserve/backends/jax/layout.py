"""Host-side layout of one step: padded, bucketed numpy arrays the jitted step consumes.

Tokens are ordered decodes first (one query each), then prefill chunks cut into tiles of
``TILE`` queries; both counts are padded to buckets (see ``bucket``), which makes the compile key
(decode bucket, prefill-tile bucket). Padding tokens write their K/V to an out-of-range slot
(dropped) and padding queries have position -1 (they see no key).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llmserve.backends.base import BatchItem

TILE = 32  # queries per prefill tile


def pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def bucket(n: int) -> int:
    """The padded size for ``n``: powers of two up to 16, then also 1.5x powers of two (24, 48,
    96, ...), so padding wastes at most a third of a large batch; 0 stays 0."""
    if n <= 0:
        return 0
    p = pow2(n)
    mid = p // 2 + p // 4
    return mid if p > 16 and n <= mid else p


def buckets_upto(limit: int) -> list[int]:
    """Every bucket from 1 up to the one holding ``limit``."""
    out = [1]
    while out[-1] < limit:
        out.append(bucket(out[-1] + 1))
    return out


@dataclass(slots=True)
class StepLayout:
    """Host arrays of one step (numpy) and where each item's rows landed."""

    arrays: dict[str, np.ndarray]
    key: tuple[int, int]  # (decode bucket, prefill tiles bucket)
    sample_row: dict[int, int] = field(default_factory=dict)  # batch index -> logits row
    token_rows: dict[int, int] = field(default_factory=dict)  # batch index -> first hidden row


def is_decode(item: BatchItem) -> bool:
    return len(item.token_ids) == 1


def step_key(items: list[BatchItem]) -> tuple[int, int]:
    """(decode bucket, prefill-tile bucket) of a batch; 0 where a group is empty."""
    decodes = sum(1 for item in items if is_decode(item))
    tiles = sum(-(-len(item.token_ids) // TILE) for item in items if not is_decode(item))
    return bucket(decodes), bucket(tiles)


def build_step(
    items: list[BatchItem],
    indices: list[int],
    block_size: int,
    table_width: int,
    num_slots: int,
    chunk_blocks: int,
) -> StepLayout:
    """Flat tokens (decodes first, then prefill tiles), slots, tables and query positions of
    ``items``; the layout's row maps are keyed by ``indices`` (the items' places in the batch)."""
    decodes = [i for i, item in enumerate(items) if is_decode(item)]
    prefills = [i for i, item in enumerate(items) if not is_decode(item)]
    num_decode, num_tiles = step_key(items)
    tokens = num_decode + num_tiles * TILE
    input_ids = np.zeros(tokens, np.int32)
    positions = np.zeros(tokens, np.int32)
    slots = np.full(tokens, num_slots, np.int32)  # out of range: dropped by the KV write
    decode_tables = np.zeros((num_decode, table_width), np.int32)
    decode_pos = np.full((num_decode, 1), -1, np.int32)
    prefill_tables = np.zeros((num_tiles, table_width), np.int32)
    prefill_pos = np.full((num_tiles, TILE), -1, np.int32)
    layout = StepLayout({}, (num_decode, num_tiles))
    sample_rows = np.zeros(num_decode + num_tiles, np.int32)

    def table_of(item: BatchItem) -> np.ndarray:
        need = -(-item.end_pos // block_size)
        if item.end_pos <= item.start_pos:
            raise ValueError(f"sequence {item.seq_id}: batch item has no tokens")
        if need > len(item.block_table):
            raise ValueError(f"sequence {item.seq_id}: block table too short for {item.end_pos} tokens")
        if need > table_width:
            raise ValueError(f"sequence {item.seq_id}: {item.end_pos} tokens exceed the model length")
        return np.asarray(item.block_table[:need], np.int32)

    for row, i in enumerate(decodes):
        item = items[i]
        table = table_of(item)
        pos = item.start_pos
        input_ids[row] = item.token_ids[0]
        positions[row] = pos
        slots[row] = table[pos // block_size] * block_size + pos % block_size
        decode_tables[row, : len(table)] = table
        decode_pos[row, 0] = pos
        layout.sample_row[indices[i]] = row
        layout.token_rows[indices[i]] = row
        sample_rows[row] = row
    tile = 0
    for i in prefills:
        item = items[i]
        table = table_of(item)
        n = len(item.token_ids)
        row = num_decode + tile * TILE
        pos = np.arange(item.start_pos, item.end_pos, dtype=np.int32)
        input_ids[row : row + n] = item.token_ids
        positions[row : row + n] = pos
        slots[row : row + n] = table[pos // block_size] * block_size + pos % block_size
        count = -(-n // TILE)
        prefill_tables[tile : tile + count, : len(table)] = table
        prefill_pos.reshape(-1)[tile * TILE : tile * TILE + n] = pos
        layout.sample_row[indices[i]] = num_decode + tile  # one logits row per tile: the item's first
        layout.token_rows[indices[i]] = row
        sample_rows[num_decode + tile] = row + n - 1
        tile += count
    span = chunk_blocks * block_size

    def chunks(pos: np.ndarray) -> np.ndarray:
        return np.int32(-(-(int(pos.max()) + 1) // span) if pos.size else 0)

    layout.arrays = {
        "input_ids": input_ids,
        "positions": positions,
        "slots": slots,
        "decode_tables": decode_tables,
        "decode_pos": decode_pos,
        "decode_chunks": chunks(decode_pos),
        "prefill_tables": prefill_tables,
        "prefill_pos": prefill_pos,
        "prefill_chunks": chunks(prefill_pos),
        "sample_rows": sample_rows,
    }
    return layout
