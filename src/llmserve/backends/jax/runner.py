"""Model runner: turns an engine ``Batch`` into jitted forward passes over the paged KV cache.

Shapes are padded to buckets so the number of compilations is bounded: a step is compiled per
(decode bucket, prefill-tile bucket) (layout.py). The context length is not
in the key: attention loops over key chunks with a traced trip count. Every compilation is
logged with its bucket. ``allocate_kv_cache`` compiles every decode-only and prefill-only
bucket the engine's limits allow; a batch mixing decodes and prefill chunks whose bucket is not
compiled yet runs as those two warm halves while its own bucket compiles in the background, so
no step waits for XLA after the warm-up. Compiled programs are also kept in JAX's persistent
compilation cache, which makes later starts much faster.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmserve.arch.hf_config import load_arch_config
from llmserve.arch.registry import UnsupportedModelError, implementation, is_encoder
from llmserve.backends.base import Batch, ModelInfo
from llmserve.backends.jax import model as llama
from llmserve.backends.jax.layout import TILE, StepLayout, buckets_upto, build_step, is_decode, step_key
from llmserve.backends.jax.sharding import ShardingPlan, make_mesh, named, param_shardings
from llmserve.errors import ConfigError
from llmserve.sources.weights import iter_weights

log = logging.getLogger("llmserve.jax")

KEY_CHUNK = 128  # keys visited per attention loop iteration (rounded to whole blocks)
DTYPES = ("float32", "bfloat16", "float16")


def resolve_dtype(dtype: str, platform: str) -> str:
    """The run dtype for --dtype: "auto" is bfloat16 on accelerators and float32 on CPU, where
    XLA runs bf16 matmuls no faster than f32 and converts around every op (see JAX_PERF notes)."""
    if dtype == "auto":
        return "float32" if platform == "cpu" else "bfloat16"
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return dtype


def enable_compilation_cache() -> None:
    """Use JAX's persistent compilation cache in llmserve's cache folder, unless the user set
    one (JAX_COMPILATION_CACHE_DIR)."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    from llmserve.sources.packs import cache_dir

    path = cache_dir() / "jax-compilation-cache"
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:  # a read-only home: compile every start
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


@dataclass(slots=True)
class StepPart:
    """What one jitted call returns: device logits and hidden states, and where items landed."""

    logits: Any  # float32 [rows, vocab]
    hidden: Any  # [tokens, hidden]
    layout: StepLayout


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

        enable_compilation_cache()
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
        self._lock = threading.Lock()  # compiled / compile_seconds, shared with the compile thread
        self._pending: set[tuple[int, int]] = set()
        self._queue: queue.Queue | None = None
        self._logits_fn = None

    # ------------------------------------------------------------------ loading

    def load(self) -> ModelInfo:
        import jax

        cfg = load_arch_config(self.model_dir)
        if is_encoder(cfg.architecture):
            raise UnsupportedModelError(f"{cfg.architecture} is an embedding model, not a causal LM")
        implementation(cfg.architecture, "jax")  # a family registered for torch only stops here
        llama.check_supported(cfg)
        self.cfg = cfg
        self.plan = ShardingPlan.for_config(cfg, self.tp)
        host = llama.load_params(iter_weights(self.model_dir, framework="numpy"), cfg, self.dtype)
        self.params = jax.tree.map(jax.device_put, host, param_shardings(host, self.plan, self.mesh))
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
        sharding = named(self.mesh, self.plan.cache_spec())
        zeros = jax.jit(
            lambda: (jnp.zeros(k_shape, self.dtype), jnp.zeros(v_shape, self.dtype)),
            out_shardings=(sharding, sharding),
        )
        self.caches = tuple(zeros() for _ in range(cfg.num_layers))
        self.block_size, self.num_blocks = block_size, num_blocks
        self.chunk_blocks = max(1, KEY_CHUNK // block_size)
        max_len = min(self.max_model_len or cfg.max_position_embeddings, num_blocks * block_size)
        blocks = -(-max_len // block_size)
        self.table_width = -(-blocks // self.chunk_blocks) * self.chunk_blocks

        def spec(a: Any) -> Any:
            return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding)

        # Lowering uses shapes only: the compile thread must not touch donated buffers.
        self._param_specs = jax.tree.map(spec, self.params)
        self._cache_specs = jax.tree.map(spec, self.caches)
        fn = functools.partial(
            llama.forward,
            cfg=cfg,
            statics={"tile": TILE, "chunk_blocks": self.chunk_blocks},
            inv_freq=self.inv_freq,
        )
        cache_out = tuple((sharding, sharding) for _ in self.caches)
        self._jitted = jax.jit(
            fn, donate_argnums=(1,), out_shardings=(cache_out, self.replicated, self.replicated)
        )
        self.compiled.clear()
        if self.warmup:
            self.warm_up()

    def warm_keys(self) -> list[tuple[int, int]]:
        """Every decode-only bucket, and the prefill-only buckets up to a full token budget plus
        one tile (a budget that ends inside a prompt chunk leaves that chunk a partial tile)."""
        decode = buckets_upto(self.max_num_seqs)
        tiles = buckets_upto(-(-self.max_num_batched_tokens // TILE) + 1)
        return [(d, 0) for d in decode] + [(0, t) for t in tiles]

    def warm_up(self) -> None:
        start = time.perf_counter()
        keys = self.warm_keys()
        for key in keys:
            self._executable(key)
        log.info(
            "jax warm-up: %d step buckets (decodes, prefill tiles of %d) compiled in %.1f s: %s",
            len(keys), TILE, time.perf_counter() - start, keys,
        )  # fmt: skip

    # ------------------------------------------------------------------ compiling

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
        return {k: jax.ShapeDtypeStruct(s, np.int32, sharding=self.replicated) for k, s in shapes.items()}

    def _executable(self, key: tuple[int, int], background: bool = False) -> Any:
        exe = self.compiled.get(key)
        if exe is not None:
            return exe
        start = time.perf_counter()
        exe = self._jitted.lower(self._param_specs, self._cache_specs, self._step_specs(key)).compile()
        seconds = time.perf_counter() - start
        with self._lock:
            self.compiled[key] = exe
            self.compile_seconds += seconds
            self._pending.discard(key)
            count = len(self.compiled)
        log.info(
            "jax compile #%d%s: step bucket decode=%d prefill_tiles=%d (%d tokens) in %.2f s",
            count, " (background)" if background else "", key[0], key[1], key[0] + key[1] * TILE, seconds,
        )  # fmt: skip
        return exe

    def _compile_later(self, key: tuple[int, int]) -> None:
        with self._lock:
            if key in self._pending or key in self.compiled:
                return
            self._pending.add(key)
            if self._queue is None:
                self._queue = queue.Queue()
                threading.Thread(target=self._compile_loop, name="llmserve-jax-compile", daemon=True).start()
        self._queue.put(key)

    def _compile_loop(self) -> None:
        while True:
            key = self._queue.get()
            try:
                self._executable(key, background=True)
            except Exception:  # the split path keeps serving this shape
                log.exception("jax: background compile of bucket %s failed", key)
            finally:
                self._queue.task_done()

    def wait_for_compiles(self) -> None:
        """Block until background compilations are done (tests, benchmarks)."""
        if self._queue is not None:
            self._queue.join()

    # ------------------------------------------------------------------ running

    def forward(self, batch: Batch) -> list[StepPart]:
        """Run the batch: one part, or two (decodes, prefill chunks) while its bucket compiles."""
        if not self.caches:
            raise RuntimeError("allocate_kv_cache() before forward()")
        if batch.block_size != self.block_size:
            raise ValueError(f"batch block_size {batch.block_size} != allocated {self.block_size}")
        items = batch.items
        key = step_key(items)
        if key[0] and key[1] and key not in self.compiled:
            self._compile_later(key)
            decodes = [i for i, item in enumerate(items) if is_decode(item)]
            prefills = [i for i, item in enumerate(items) if not is_decode(item)]
            return [self._run(decodes, items), self._run(prefills, items)]
        return [self._run(list(range(len(items))), items)]

    def _run(self, indices: list[int], items: list) -> StepPart:
        layout = build_step(
            [items[i] for i in indices],
            indices,
            self.block_size,
            self.table_width,
            self.num_blocks * self.block_size,
            self.chunk_blocks,
        )
        exe = self._executable(layout.key)
        self.caches, logits, hidden = exe(self.params, self.caches, layout.arrays)
        return StepPart(logits, hidden, layout)

    def logits_of_rows(self, hidden: Any, rows: np.ndarray) -> Any:
        """float32 logits of ``rows`` of a step's hidden states (for prompt logprobs)."""
        import jax

        if self._logits_fn is None:
            cfg = self.cfg
            self._logits_fn = jax.jit(lambda p, h, r: llama.compute_logits(p, h[r], cfg))
        return self._logits_fn(self.params, hidden, rows)
