"""Model runner: turns an engine ``Batch`` into one forward pass over the paged KV cache.

Per step, all bookkeeping (flat token ids, positions, cache slots, padded block tables, masks)
is built once here in plain Python and a few tensor ops; the layers only index with it.

On CUDA the fused ops and attention are Triton kernels (``TritonOps``), the KV pool is sized by
profiling a max-size step (``profile_kv_budget``) and decode-only steps replay CUDA graphs
(``capture_decode_graphs``). With tensor parallelism every rank runs its own runner on its shard.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch

from llmserve.arch.hf_config import ArchConfig, load_arch_config
from llmserve.arch.registry import UnsupportedModelError, is_encoder
from llmserve.backends.base import DTYPE_BYTES, Batch, BatchItem, ModelInfo
from llmserve.backends.torch.attention import (
    AttentionMetadata,
    DecodeGroup,
    PrefillGroup,
    build_masks,
    split_supported,
)
from llmserve.backends.torch.cpu_kernels import CpuKernels
from llmserve.backends.torch.loader import load_model
from llmserve.backends.torch.packed_linear import drop_plain_weights, pack_linears
from llmserve.errors import ConfigError

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_dtype(dtype: str, device: str, cfg: ArchConfig) -> str:
    """The run dtype name for "auto" or an explicit choice.

    "auto" is bfloat16 on CPUs with native bf16 matmuls (float32 elsewhere on CPU), and the
    checkpoint's half type (else bfloat16) on accelerators.
    """
    if dtype != "auto":
        if dtype not in TORCH_DTYPES:
            raise ConfigError(f"--dtype must be one of auto, {', '.join(TORCH_DTYPES)}; got {dtype!r}")
        return dtype
    if torch.device(device).type == "cpu":
        return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"
    return cfg.torch_dtype if cfg.torch_dtype in ("bfloat16", "float16") else "bfloat16"


class TorchModelRunner:
    """Loads a causal LM and runs batches of prefill chunks and decodes on its paged KV cache."""

    def __init__(
        self,
        model_dir: str,
        dtype: str,
        device: str = "cpu",
        use_kernels: bool = True,
        tp: Any = None,
        quantization: str | None = None,
        group_size: int = 32,
    ) -> None:
        self.model_dir = model_dir
        self.quantization, self.group_size = quantization, group_size
        self.requested_dtype = dtype
        self.device = torch.device(device)
        self.cfg: ArchConfig | None = None
        self.model: torch.nn.Module | None = None
        self.dtype, self.dtype_name = torch.float32, "float32"
        self.kv_caches: list[torch.Tensor] = []
        self.block_size = 0
        self.num_blocks = 0
        self.use_kernels = use_kernels
        self.decode_kernel = None
        self.prefill_kernel = None
        self.tp = tp  # tp_layers.TPGroup when the model is sharded over several ranks
        self.kv_heads = 0  # on this rank
        self.graphs = None  # cuda_graphs.DecodeGraphs once captured

    def _gguf_file(self):
        from llmserve.sources.gguf import gguf_source

        if self.group_size != 32:
            raise ConfigError(
                "--quantization-group-size does not apply to --quantization gguf (its blocks are 32)"
            )
        path = gguf_source(self.model_dir)
        if path is None:
            raise ConfigError(
                f"--quantization gguf needs a model made from a GGUF file (a .gguf path or a GGUF pack); "
                f"{self.model_dir} is not"
            )
        return path

    def load(self) -> ModelInfo:
        cfg = load_arch_config(self.model_dir)
        if is_encoder(cfg.architecture):
            raise UnsupportedModelError(f"{cfg.architecture} is an embedding model, not a causal LM")
        self.dtype_name = dtype_name = resolve_dtype(self.requested_dtype, self.device.type, cfg)
        self.dtype = TORCH_DTYPES[dtype_name]
        self.cfg = cfg
        if self.quantization and (self.device.type != "cpu" or (self.tp is not None and self.tp.world > 1)):
            raise ConfigError("--quantization runs on the CPU backend without tensor parallelism")
        gguf_file = self._gguf_file() if self.quantization == "gguf" else None
        self.model = load_model(self.model_dir, cfg, self.dtype, self.device, self.tp)
        if gguf_file is not None:
            from llmserve.backends.torch.gguf_linear import gguf_head, load_gguf_linears
            from llmserve.backends.torch.quant_head import quantize_head
            from llmserve.sources.gguf import read_gguf

            reader = read_gguf(gguf_file)  # one parse of the file for projections and head
            load_gguf_linears(self.model, reader)
            quantize_head(self.model, gguf_head(self.model, reader))
        elif self.quantization:
            from llmserve.backends.torch.quant_head import quantize_head
            from llmserve.backends.torch.quant_linear import quantize_linears

            quantize_linears(self.model, self.quantization, self.group_size)
            quantize_head(self.model)
        packed = self.tp is None and self.device.type == "cpu" and self.dtype == torch.bfloat16
        if packed:  # the plain weights stay until the fused decode step is known to want them
            pack_linears(self.model, keep_weight=self.use_kernels and hasattr(self.model, "fused_decode"))
        self.kv_heads = cfg.num_kv_heads
        if self.tp is not None and self.tp.world > 1:
            from llmserve.backends.torch.tp_layers import ShardingPlan

            # Split attention keeps its share of the KV heads; replicated attention keeps them all.
            self.kv_heads = ShardingPlan.for_config(cfg, self.tp.world).kv_heads
        if self.use_kernels and self.device.type == "cuda":
            from llmserve.backends.torch.triton.ops import TritonOps

            self.model.ops = ops = TritonOps()
            self.decode_kernel, self.prefill_kernel = ops.paged_decode, ops.prefill
        elif self.use_kernels and (kernels := CpuKernels.load(self.dtype, self.device)) is not None:
            self.model.ops = kernels
            if kernels.supports_decode(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim):
                self.decode_kernel = kernels.paged_decode
                if hasattr(self.model, "fused_decode"):
                    from llmserve.backends.torch.decode_step import FusedDecode

                    self.model.fused_decode = FusedDecode.build(self.model, kernels, self.dtype)
        if packed and getattr(self.model, "fused_decode", None) is None:
            drop_plain_weights(self.model)
        return ModelInfo(
            architecture=cfg.architecture,
            vocab_size=cfg.vocab_size,
            num_layers=cfg.num_layers,
            num_kv_heads=self.kv_heads,
            head_dim=cfg.head_dim,
            max_model_len=cfg.max_position_embeddings,
            dtype=dtype_name,
            eos_token_ids=cfg.eos_token_ids,
        )

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        if self.cfg is None:
            raise RuntimeError("load() the model before allocating its KV cache")
        self.graphs = None  # captured against the old cache
        shape = (num_blocks, block_size, 2, self.kv_heads, self.cfg.head_dim)
        self.kv_caches = [_zeros(shape, self.dtype, self.device) for _ in range(self.cfg.num_layers)]
        self.block_size, self.num_blocks = block_size, num_blocks

    def sleep(self, level: int) -> None:
        """Drop the KV cache (level 1), and the weights (level 2); ``num_blocks`` is kept."""
        self.graphs = None  # they hold the cache's addresses
        self.kv_caches = []
        if level >= 2:
            self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def wake_up(self) -> None:
        """Reload the weights if ``sleep(2)`` dropped them; ``allocate_kv_cache`` follows."""
        if self.model is None:
            self.load()

    @torch.inference_mode()
    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """(float32 logits [sampling items, vocab] in item order, {item index: prompt logits})."""
        if not self.kv_caches:
            raise RuntimeError("allocate_kv_cache() before forward()")
        if batch.block_size != self.block_size:
            raise ValueError(f"batch block_size {batch.block_size} != allocated {self.block_size}")
        if self.graphs is not None and self.graphs.can_run(batch.items):
            hidden, last_row = self.graphs.run(batch.items), range(len(batch.items))
        else:
            step = StepInputs(
                batch.items, self.block_size, self.cfg.sliding_window, self.device, self.decode_kernel,
                prefill_kernel=self.prefill_kernel,
            )  # fmt: skip
            hidden = self.model(step.input_ids, step.positions, self.kv_caches, step.meta)
            last_row = step.last_row
        sample_rows = [last_row[i] for i, item in enumerate(batch.items) if item.sample]
        prompt_rows = {
            i: range(last_row[i] + 1 - len(item.token_ids), last_row[i] + 1)
            for i, item in enumerate(batch.items)
            if item.want_prompt_logprobs
        }
        rows = sample_rows + [r for span in prompt_rows.values() for r in span]
        if not rows:
            return torch.empty(0, self.cfg.vocab_size), {}
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        logits = self.model.compute_logits(hidden.index_select(0, index))
        prompt_logits, offset = {}, len(sample_rows)
        for i, span in prompt_rows.items():
            prompt_logits[i] = logits[offset : offset + len(span)]
            offset += len(span)
        return logits[: len(sample_rows)], prompt_logits

    @torch.inference_mode()
    def profile_kv_budget(
        self, utilization: float, max_tokens: int, max_seqs: int, block_size: int, max_model_len: int
    ) -> int:
        """CUDA: bytes the KV cache may take on this device, the same on every rank (the minimum).

        Runs the largest step the scheduler can make (``profile_batches``), then: total *
        utilization - peak torch memory of that step (weights + activations + logits) - memory
        outside torch's allocator (CUDA context, NCCL buffers, other processes)."""
        prefill, decode, num_blocks = profile_batches(max_tokens, max_seqs, block_size, max_model_len)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self.allocate_kv_cache(num_blocks, block_size)  # a throwaway cache just big enough
        cache_bytes = num_blocks * block_size * self.kv_bytes_per_token()
        self.forward(prefill)
        self.forward(decode)  # compiles the eager decode kernels now, not while serving
        torch.cuda.synchronize(self.device)
        self.kv_caches = []
        peak = torch.cuda.max_memory_allocated(self.device) - cache_bytes
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        outside = max(total - free - torch.cuda.memory_reserved(self.device), 0)
        budget = torch.tensor([int(total * utilization) - peak - outside], device=self.device)
        if self.tp is not None:
            import torch.distributed as dist

            self.tp.all_reduce(budget, dist.ReduceOp.MIN)
        return max(int(budget.item()), 0)

    def kv_bytes_per_token(self) -> int:
        """K and V bytes of one token over all layers, on this rank."""
        return 2 * self.cfg.num_layers * self.kv_heads * self.cfg.head_dim * DTYPE_BYTES[self.dtype_name]

    @torch.inference_mode()
    def capture_decode_graphs(self, max_num_seqs: int, max_model_len: int) -> None:
        """CUDA: capture decode-only steps at bucketed batch sizes (after allocate_kv_cache).
        Needs the Triton kernels (their KV write skips padded rows)."""
        from llmserve.backends.torch.triton.cuda_graphs import DecodeGraphs, capture_sizes

        if self.device.type != "cuda" or self.prefill_kernel is None:
            return
        max_blocks = -(-max_model_len // self.block_size)
        graphs = DecodeGraphs(capture_sizes(max_num_seqs), max_blocks, self.block_size, self.device)
        graphs.capture(self.model, self.kv_caches, self.decode_kernel, self.cfg.sliding_window)
        self.graphs = graphs


def profile_batches(
    max_tokens: int, max_seqs: int, block_size: int, max_model_len: int
) -> tuple[Batch, Batch, int]:
    """The largest step the scheduler can make (``max_tokens`` prompt tokens over up to
    ``max_seqs`` sequences, all sampling), a decode step after it, and the blocks they need."""
    num_tokens = min(max_tokens, max_seqs * max(max_model_len - 1, 1))
    num_seqs = min(max_seqs, num_tokens)
    prefills, decodes, first = [], [], 0
    for i in range(num_seqs):
        n = num_tokens // num_seqs + (i < num_tokens % num_seqs)
        table = list(range(first, first + n // block_size + 1))  # room for the decode token
        first += len(table)
        prefills.append(BatchItem(i, [0] * n, 0, table, True, None, (), ()))
        decodes.append(BatchItem(i, [0], n, table, True, None, (), ()))
    return Batch(prefills, block_size), Batch(decodes, block_size), first


class StepInputs:
    """Flat inputs and attention metadata for one batch, decodes first, then prefill chunks."""

    def __init__(
        self,
        items: list[BatchItem],
        block_size: int,
        window: int | None,
        device: torch.device,
        kernel: Any,
        prefill_kernel: Any = None,
    ) -> None:
        decodes = [i for i, item in enumerate(items) if len(item.token_ids) == 1]
        prefills = [i for i, item in enumerate(items) if len(item.token_ids) != 1]
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        self.last_row: dict[int, int] = {}
        for i in decodes + prefills:
            item = items[i]
            start, end, table = item.start_pos, item.end_pos, item.block_table
            if end <= start:
                raise ValueError(f"sequence {item.seq_id}: batch item has no tokens")
            if (end - 1) // block_size >= len(table):
                raise ValueError(f"sequence {item.seq_id}: block table too short for {end} tokens")
            input_ids.extend(item.token_ids)
            if end - start == 1:
                positions.append(start)
                slots.append(table[start // block_size] * block_size + start % block_size)
            else:
                span = range(start, end)
                positions.extend(span)
                slots.extend([table[p // block_size] * block_size + p % block_size for p in span])
            self.last_row[i] = len(input_ids) - 1

        def tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)

        self.input_ids = tensor(input_ids)
        self.positions = tensor(positions)
        decode = prefill = None
        if decodes:
            block_ids, max_blocks, ctx_lens = _padded_tables([items[i] for i in decodes], block_size)
            lens = tensor(ctx_lens)
            mask = None
            if kernel is None:
                ones = torch.ones(len(decodes), dtype=torch.long, device=device)
                mask = build_masks(lens, ones, 1, max_blocks * block_size, window)
            decode = DecodeGroup(len(decodes), tensor(block_ids), max_blocks, lens, mask, kernel, window)
        if prefills:
            group = [items[i] for i in prefills]
            prefill = _prefill_group(group, block_size, window, device, tensor, prefill_kernel)
        self.meta = AttentionMetadata(tensor(slots), decode, prefill)


def _prefill_group(
    group: list[BatchItem], block_size: int, window: int | None, device: torch.device, tensor, kernel: Any
) -> PrefillGroup:
    block_ids, max_blocks, ctx_lens = _padded_tables(group, block_size)
    query_lens = [len(item.token_ids) for item in group]
    max_query = max(query_lens)
    if kernel is not None:  # packed queries, masked inside the kernel: no padding, no mask tensor
        starts = list(itertools.accumulate(query_lens, initial=0))
        return PrefillGroup(len(group), max_query, tensor(block_ids), max_blocks, None, kernel=kernel,
                            query_starts=tensor(starts), context_lens=tensor(ctx_lens), window=window)  # fmt: skip
    if window is None and split_supported(device):  # no mask: chunk causal + full prefix, merged
        prefill = PrefillGroup(len(group), max_query, tensor(block_ids), max_blocks, None, split=True)
        prefixes = [(j, c - n) for j, (c, n) in enumerate(zip(ctx_lens, query_lens, strict=True)) if c > n]
        if prefixes:
            prefill.prefix_rows = tensor([j for j, _ in prefixes])
            prefill.prefix_lens = lens = [p for _, p in prefixes]
            if min(lens) != max(lens):
                prefill.prefix_mask = (torch.arange(max(lens)) < torch.tensor(lens)[:, None])[:, None, None]
    else:
        mask = build_masks(
            torch.tensor(ctx_lens), torch.tensor(query_lens), max_query, max_blocks * block_size, window
        )
        prefill = PrefillGroup(len(group), max_query, tensor(block_ids), max_blocks, mask.to(device))
    if len(group) > 1:
        pad, unpad, offset = [], [], 0
        for j, n in enumerate(query_lens):
            pad.extend(offset + min(q, n - 1) for q in range(max_query))
            unpad.extend(range(j * max_query, j * max_query + n))
            offset += n
        prefill.pad_index, prefill.unpad_index = tensor(pad), tensor(unpad)
    return prefill


def _padded_tables(items: list[BatchItem], block_size: int) -> tuple[list[int], int, list[int]]:
    """Flattened block tables padded to the longest context (pad entries point at block 0,
    masked out), the padded length in blocks, and each context length."""
    ctx_lens = [item.end_pos for item in items]
    max_blocks = (max(ctx_lens) + block_size - 1) // block_size
    flat: list[int] = []
    for item in items:
        table = item.block_table[:max_blocks]
        flat.extend(table)
        flat.extend([0] * (max_blocks - len(table)))
    return flat, max_blocks, ctx_lens


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zeroed KV cache tensor. On CPU its memory comes from calloc (fresh zero pages), so the
    pool is committed only as blocks are first written, not all at start (torch.zeros writes
    every page)."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    raw = np.zeros(nbytes + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64  # 64-byte aligned, as torch's own allocator
    return torch.from_numpy(raw[start : start + nbytes]).view(dtype).view(shape)
