"""CUDA graphs for decode-only steps, captured once at bucketed batch sizes.

Why: a decode step is a few hundred small kernels (per layer: 4 GEMMs, the fused norm, rotary,
KV write, attention, SiLU-mul kernels, plus all-reduces under tensor parallelism); at batch 1-64
the GPU runs each faster than Python can launch it. Replaying a captured graph launches the whole
forward with one call.

How: after the KV pool is allocated, the forward is captured for each bucket size (1, 2, 4, 8,
then every 8 up to ``max_num_seqs``, at most 256), largest first, sharing one memory pool. Each
graph reads static device buffers: token ids, positions, cache slots and context lengths
(``meta``, [4, max_bucket]) and the block tables ([max_bucket, max_blocks], max_blocks from
max_model_len, so the decode kernel's split count is fixed per bucket). A step of n decodes takes
the smallest bucket >= n; rows n.. are padding: token 0 at position 0, slot -1 (the KV write
skips it), context length 1 over block 0, and their outputs are dropped. Per step the host work
is: fill a pinned staging copy, two host-to-device copies, ``graph.replay()``. Steps with prompt
chunks, or more sequences than the largest bucket, run eagerly. ``--enforce-eager`` disables all
of this. Graph memory comes out of the headroom left by ``--gpu-memory-utilization``.
"""

from __future__ import annotations

import bisect

import torch

from llmserve.backends.base import BatchItem
from llmserve.backends.torch.attention import AttentionMetadata, DecodeGroup

MAX_CAPTURE_SIZE = 256
PAD_SLOT = -1  # the KV-write kernel skips negative slots


def capture_sizes(max_num_seqs: int, limit: int = MAX_CAPTURE_SIZE) -> list[int]:
    """Bucket batch sizes: 1, 2, 4, then multiples of 8, and the largest batch itself."""
    top = max(min(max_num_seqs, limit), 1)
    return sorted({s for s in (1, 2, 4) if s < top} | set(range(8, top, 8)) | {top})


def pick_bucket(n: int, sizes: list[int]) -> int | None:
    """The smallest bucket holding ``n`` sequences, or None when none does."""
    i = bisect.bisect_left(sizes, n)
    return sizes[i] if i < len(sizes) else None


class DecodeGraphs:
    """Static buffers, the captured graphs, and the per-step staging of a decode batch."""

    def __init__(self, sizes: list[int], max_blocks: int, block_size: int, device: torch.device) -> None:
        self.sizes, self.max_blocks, self.block_size, self.device = sizes, max_blocks, block_size, device
        max_bs, pin = sizes[-1], device.type == "cuda"
        # Rows: input ids, positions, cache slots, context lengths.
        self.host_meta = torch.zeros(4, max_bs, dtype=torch.long, pin_memory=pin)
        self.host_tables = torch.zeros(max_bs, max_blocks, dtype=torch.int32, pin_memory=pin)
        self._pad(0, max_bs)
        self.meta = self.host_meta.to(device)
        self.tables = self.host_tables.to(device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._copied = None  # event: the last host-to-device copies are done (staging reusable)

    def can_run(self, items: list[BatchItem]) -> bool:
        capacity = self.max_blocks * self.block_size
        return (
            bool(self.graphs)
            and len(items) <= self.sizes[-1]
            and all(len(item.token_ids) == 1 and item.end_pos <= capacity for item in items)
        )

    def stage(self, items: list[BatchItem]) -> tuple[int, int]:
        """Write the batch into the host buffers, padded to its bucket; returns (bucket, the
        block-table columns in use)."""
        n, bs_ = len(items), self.block_size
        bucket = pick_bucket(n, self.sizes)
        if bucket is None or n == 0:
            raise ValueError(f"{n} sequences do not fit a captured batch size (largest {self.sizes[-1]})")
        if self._copied is not None:
            self._copied.synchronize()
        tables = self.host_tables.numpy()
        rows: list[list[int]] = [[], [], [], []]
        width = 1
        for i, item in enumerate(items):
            pos, table = item.start_pos, item.block_table
            used = pos // bs_ + 1
            rows[0].append(item.token_ids[0])
            rows[1].append(pos)
            rows[2].append(table[pos // bs_] * bs_ + pos % bs_)
            rows[3].append(pos + 1)
            tables[i, :used] = table[:used]
            width = max(width, used)
        self.host_meta[:, :n] = torch.tensor(rows, dtype=torch.long)
        self._pad(n, bucket)
        return bucket, width

    def _pad(self, start: int, end: int) -> None:
        self.host_meta[:2, start:end] = 0
        self.host_meta[2, start:end] = PAD_SLOT
        self.host_meta[3, start:end] = 1
        self.host_tables[start:end, 0] = 0

    def prepare(self, items: list[BatchItem]) -> int:
        """Stage the batch and copy it into the static device buffers; returns its bucket."""
        bucket, width = self.stage(items)
        self.meta[:, :bucket].copy_(self.host_meta[:, :bucket], non_blocking=True)
        self.tables[:bucket, :width].copy_(self.host_tables[:bucket, :width], non_blocking=True)
        if self.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()
        return bucket

    def run(self, items: list[BatchItem]) -> torch.Tensor:
        """Hidden states [len(items), hidden] of a decode-only batch (``can_run`` was true)."""
        graph, out = self.graphs[self.prepare(items)]
        graph.replay()
        return out[: len(items)]

    def metadata(self, bucket: int, kernel, window: int | None) -> AttentionMetadata:
        """Attention metadata over the static buffers' first ``bucket`` rows."""
        lens = self.meta[3, :bucket]
        group = DecodeGroup(
            bucket, self.tables[:bucket].view(-1), self.max_blocks, lens, None, kernel, window
        )
        return AttentionMetadata(self.meta[2, :bucket], group, None)

    def capture(
        self, model: torch.nn.Module, kv_caches: list[torch.Tensor], kernel, window: int | None
    ) -> None:
        """Capture ``model``'s forward for every bucket, largest first (smaller graphs reuse its
        memory). Every rank of a tensor-parallel group captures the same sizes in the same order."""
        pool = torch.cuda.graph_pool_handle()
        for bucket in reversed(self.sizes):
            ids, positions = self.meta[0, :bucket], self.meta[1, :bucket]
            meta = self.metadata(bucket, kernel, window)
            model(ids, positions, kv_caches, meta)  # warm-up: Triton compiles, cuBLAS picks its kernels
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = model(ids, positions, kv_caches, meta)
            self.graphs[bucket] = (graph, out)
        torch.cuda.synchronize(self.device)
