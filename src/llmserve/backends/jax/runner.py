"""Model runner: turns an engine ``Batch`` into one jitted forward pass over the paged KV cache.

Shapes are padded to buckets so the number of compilations is bounded: a step is compiled per
(decode bucket, prefill-tile bucket), both powers of two. Decodes are tiles of one query;
prefill chunks are cut into tiles of ``TILE`` queries. The context length is not in the key
(attention loops over key chunks with a traced trip count), nor is the batch composition beyond
these two numbers. Every compilation is logged with its bucket; ``allocate_kv_cache`` compiles
the decode-only and prefill-only buckets up front so a first request does not wait for XLA.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmserve.backends.base import Batch, BatchItem, ModelInfo
from llmserve.backends.jax import model as llama
from llmserve.backends.jax.sharding import ShardingPlan, make_mesh, named, param_shardings
from llmserve.errors import ConfigError
from llmserve.models.hf_config import load_arch_config
from llmserve.models.registry import UnsupportedModelError, is_encoder
from llmserve.models.weights import iter_weights

log = logging.getLogger("llmserve.jax")

TILE = 32  # queries per prefill tile
KEY_CHUNK = 128  # keys visited per attention loop iteration (rounded to whole blocks)
DTYPES = ("float32", "bfloat16", "float16")


def resolve_dtype(dtype: str, platform: str) -> str:
    """"auto" is bfloat16 on accelerators and float32 on CPU: XLA:CPU runs bf16 matmuls slower
    than f32 here (see JAX_PERF notes), unlike torch's oneDNN kernels."""
    if dtype == "auto":
        return "float32" if platform == "cpu" else "bfloat16"
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return dtype


def pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def buckets_upto(limit: int) -> list[int]:
    """Powers of two from 1 up to the first one >= limit."""
    out = [1]
    while out[-1] < limit:
        out.append(out[-1] * 2)
    return out


@dataclass(slots=True)
class StepLayout:
    """Host arrays of one step (numpy) and where each item's rows landed."""

    arrays: dict[str, np.ndarray]
    key: tuple[int, int]  # (decode bucket, prefill tiles bucket)
    sample_row: dict[int, int] = field(default_factory=dict)  # item index -> logits row
    token_rows: dict[int, int] = field(default_factory=dict)  # item index -> first hidden row


def build_step(
    items: list[BatchItem], block_size: int, table_width: int, num_slots: int, chunk_blocks: int
) -> StepLayout:
    """Flat tokens (decodes first, then prefill tiles), slots, tables and query positions."""
    decodes = [i for i, item in enumerate(items) if len(item.token_ids) == 1]
    prefills = [i for i, item in enumerate(items) if len(item.token_ids) > 1]
    num_decode = pow2(len(decodes)) if decodes else 0
    tiles_needed = sum(-(-len(items[i].token_ids) // TILE) for i in prefills)
    num_tiles = pow2(tiles_needed) if tiles_needed else 0
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
        layout.sample_row[i] = row
        layout.token_rows[i] = row
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
        layout.sample_row[i] = num_decode + tile  # one logits row per tile: this item's first
        layout.token_rows[i] = row
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


class JaxModelRunner:
    """Loads a causal LM onto a device mesh and runs engine batches on its paged KV cache."""

    def __init__(
        self,
        model_dir: str,
        dtype: str = "auto",
        *,
        platform: str | None = None,
        tensor_parallel_size: int = 1,
        max_num_seqs: int = 128,
        max_num_batched_tokens: int = 2048,
        max_model_len: int | None = None,
        warmup: bool = True,
    ) -> None:
        import jax

        self.model_dir = model_dir
        self.mesh = make_mesh(tensor_parallel_size, platform)
        self.replicated = named(self.mesh, ())
        self.platform = self.mesh.devices.flat[0].platform
        self.dtype_name = resolve_dtype(dtype, self.platform)
        self.dtype = jax.numpy.dtype(self.dtype_name)
        self.tp = tensor_parallel_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.warmup = warmup
        self.cfg = None
        self.params: dict | None = None
        self.caches: tuple = ()
        self.block_size = self.num_blocks = self.table_width = self.chunk_blocks = 0
        self.compiled: dict[tuple[int, int], Any] = {}
        self.compile_seconds = 0.0
        self._logits_fns: dict[int, Any] = {}

    # ------------------------------------------------------------------ loading

    def load(self) -> ModelInfo:
        import jax

        cfg = load_arch_config(self.model_dir)
        if is_encoder(cfg.architecture):
            raise UnsupportedModelError(f"{cfg.architecture} is an embedding model, not a causal LM")
        llama.check_supported(cfg)
        self.cfg = cfg
        self.plan = ShardingPlan.for_config(cfg, self.tp)
        host = llama.load_params(iter_weights(self.model_dir, framework="numpy"), cfg, self.dtype)
        shardings = param_shardings(host, self.plan, self.mesh)
        self.params = jax.tree.map(jax.device_put, host, shardings)
        self.inv_freq = llama.rope_inv_freq(cfg)
        return ModelInfo(
            architecture=cfg.architecture,
            vocab_size=cfg.vocab_size,
            num_layers=cfg.num_layers,
            num_kv_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim,
            max_model_len=cfg.max_position_embeddings,
            dtype=self.dtype_name,
            eos_token_ids=cfg.eos_token_ids,
        )

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        import jax
        import jax.numpy as jnp

        if self.cfg is None:
            raise RuntimeError("load() the model before allocating its KV cache")
        cfg = self.cfg
        k_shape = (num_blocks, cfg.num_kv_heads, cfg.head_dim, block_size)
        v_shape = (num_blocks, cfg.num_kv_heads, block_size, cfg.head_dim)
        self.cache_sharding = named(self.mesh, self.plan.cache_spec())
        zeros = jax.jit(
            lambda: (jnp.zeros(k_shape, self.dtype), jnp.zeros(v_shape, self.dtype)),
            out_shardings=(self.cache_sharding, self.cache_sharding),
        )
        self.caches = tuple(zeros() for _ in range(cfg.num_layers))
        self.block_size, self.num_blocks = block_size, num_blocks
        self.chunk_blocks = max(1, KEY_CHUNK // block_size)
        max_len = min(self.max_model_len or cfg.max_position_embeddings, num_blocks * block_size)
        blocks = -(-max_len // block_size)
        self.table_width = -(-blocks // self.chunk_blocks) * self.chunk_blocks
        self.compiled.clear()
        self._jitted = self._make_step()
        if self.warmup:
            self.warm_up()

    def warm_up(self) -> None:
        """Compile every decode-only and prefill-only bucket the engine's limits allow."""
        start = time.perf_counter()
        decode = buckets_upto(self.max_num_seqs)
        tiles = buckets_upto(-(-self.max_num_batched_tokens // TILE))
        for key in [(d, 0) for d in decode] + [(0, t) for t in tiles]:
            self._executable(key)
        log.info(
            "jax warm-up: %d step buckets compiled in %.1f s (decode %s, prefill tiles of %d: %s)",
            len(self.compiled), time.perf_counter() - start, decode, TILE, tiles,
        )  # fmt: skip

    # ------------------------------------------------------------------ compiling

    def _make_step(self) -> Any:
        import jax

        replicated = self.replicated
        cache_out = tuple((self.cache_sharding, self.cache_sharding) for _ in self.caches)
        fn = functools.partial(
            llama.forward,
            cfg=self.cfg,
            statics={"tile": TILE, "chunk_blocks": self.chunk_blocks},
            inv_freq=self.inv_freq,
        )
        return jax.jit(fn, donate_argnums=(1,), out_shardings=(cache_out, replicated, replicated))

    def _step_specs(self, key: tuple[int, int]) -> dict[str, Any]:
        import jax

        num_decode, num_tiles = key
        tokens = num_decode + num_tiles * TILE
        width = self.table_width
        shapes = {
            "input_ids": (tokens,),
            "positions": (tokens,),
            "slots": (tokens,),
            "decode_tables": (num_decode, width),
            "decode_pos": (num_decode, 1),
            "decode_chunks": (),
            "prefill_tables": (num_tiles, width),
            "prefill_pos": (num_tiles, TILE),
            "prefill_chunks": (),
            "sample_rows": (num_decode + num_tiles,),
        }
        replicated = self.replicated
        return {k: jax.ShapeDtypeStruct(s, np.int32, sharding=replicated) for k, s in shapes.items()}

    def _executable(self, key: tuple[int, int]) -> Any:
        exe = self.compiled.get(key)
        if exe is None:
            start = time.perf_counter()
            exe = self._jitted.lower(self.params, self.caches, self._step_specs(key)).compile()
            seconds = time.perf_counter() - start
            self.compiled[key] = exe
            self.compile_seconds += seconds
            log.info(
                "jax compile #%d: step bucket decode=%d prefill_tiles=%d (%d tokens) in %.2f s",
                len(self.compiled), key[0], key[1], key[0] + key[1] * TILE, seconds,
            )  # fmt: skip
        return exe

    # ------------------------------------------------------------------ running

    def forward(self, batch: Batch) -> tuple[Any, Any, StepLayout]:
        """(device float32 logits [rows, vocab], device hidden [tokens, hidden], layout)."""
        if not self.caches:
            raise RuntimeError("allocate_kv_cache() before forward()")
        if batch.block_size != self.block_size:
            raise ValueError(f"batch block_size {batch.block_size} != allocated {self.block_size}")
        layout = build_step(
            batch.items, self.block_size, self.table_width, self.num_blocks * self.block_size, self.chunk_blocks
        )
        exe = self._executable(layout.key)
        self.caches, logits, hidden = exe(self.params, self.caches, layout.arrays)
        return logits, hidden, layout

    def logits_of_rows(self, hidden: Any, rows: np.ndarray) -> Any:
        """float32 logits of ``rows`` of a step's hidden states (for prompt logprobs)."""
        import jax

        fn = self._logits_fns.get(0)
        if fn is None:
            cfg = self.cfg
            fn = self._logits_fns[0] = jax.jit(lambda p, h, r: llama.compute_logits(p, h[r], cfg))
        return fn(self.params, hidden, rows)
