"""The JAX backends: ``jax`` (any JAX platform: CPU, GPU, TPU) and ``tpu`` (TPU devices only).

JAX is imported lazily, inside methods: this module (and ``llmserve plugins``) must work where
jax is not installed; ``check_available`` then says how to install it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from llmserve.backends.base import Backend, BackendUnavailable, Batch, Embedder, ModelInfo, SampleResult
from llmserve.errors import ConfigError

log = logging.getLogger("llmserve.jax")


def _import_jax(flag: str) -> Any:
    try:
        import jax
    except ImportError as exc:
        raise BackendUnavailable(
            f"--backend {flag} needs JAX, which is not installed ({exc}); "
            f"install it with: pip install 'llmserve[{flag}]'"
        ) from None
    return jax


class JaxBackend(Backend):
    """Llama-family models and BERT encoders in JAX on a (tensor-parallel) device mesh."""

    name = "jax"
    description = "JAX on any JAX platform (CPU, GPU, TPU); jit with bucketed shapes"
    platform: str | None = None  # None: JAX's default platform

    def __init__(self, config) -> None:
        super().__init__(config)
        self.check_available(config)
        self.runner = None
        self.sampler = None
        self.info: ModelInfo | None = None
        self.sleep_level = 0
        self._cache_specs = None  # shapes and shardings of the KV cache while asleep

    @classmethod
    def check_available(cls, config) -> None:
        _import_jax(cls.name)
        if config.tensor_parallel_size > 1:
            from llmserve.backends.jax.sharding import make_mesh

            make_mesh(config.tensor_parallel_size, cls.platform)  # raises when devices are missing

    def load_model(self, model_dir: str) -> ModelInfo:
        from llmserve.backends.jax.runner import JaxModelRunner
        from llmserve.backends.jax.sampler import JaxSampler

        cfg = self.config
        self.runner = JaxModelRunner(
            model_dir,
            cfg.dtype,
            platform=self.platform,
            tensor_parallel_size=cfg.tensor_parallel_size,
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            max_model_len=cfg.max_model_len,
            warmup=not cfg.enforce_eager,
        )
        self.info = self.runner.load()
        self.sampler = JaxSampler(self.info.vocab_size, cfg.seed, self.info.eos_token_ids)
        return self.info

    def kv_cache_budget_bytes(self, info: ModelInfo) -> int:
        """On accelerators: the memory JAX reports free, times --gpu-memory-utilization; on CPU
        (no such report): --kv-cache-space GiB. With tensor parallelism an unsplit cache is
        stored on every device."""
        device = self.runner.mesh.devices.flat[0]
        stats = device.memory_stats() if self.runner.platform != "cpu" else None
        if stats and "bytes_limit" in stats:
            total = stats["bytes_limit"]
            free = int(total * self.config.gpu_memory_utilization) - stats.get("bytes_in_use", 0)
            per_device = max(free, 0)
            return per_device * (self.runner.tp if self.runner.plan.attention else 1)
        return int(self.config.kv_cache_space * 2**30)

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        self.runner.allocate_kv_cache(num_blocks, block_size)
        if self.runner.warmup:
            for rows in sorted({d + t for d, t in self.runner.warm_keys()}):
                self.sampler.warm_up(rows, self.runner.replicated)

    def execute(self, batch: Batch) -> list[SampleResult]:
        results = [SampleResult(item.seq_id) for item in batch.items]
        for part in self.runner.forward(batch):
            layout = part.layout
            sampling = [i for i in layout.sample_row if batch.items[i].sample]
            if sampling:
                rows = [layout.sample_row[i] for i in sampling]
                items = [batch.items[i] for i in sampling]
                sampled = self.sampler.sample(part.logits, rows, items, batch.token_bitmask)
                for i, res in zip(sampling, sampled, strict=True):
                    results[i] = res
            for i in layout.token_rows:
                item = batch.items[i]
                if item.want_prompt_logprobs:
                    first = layout.token_rows[i]
                    rows = np.arange(first, first + len(item.token_ids), dtype=np.int32)
                    hidden = part.hidden
                    results[i].prompt_logprobs = self.sampler.prompt_logprobs(
                        lambda r, h=hidden: self.runner.logits_of_rows(h, r), rows, item
                    )
        return results

    def set_logits_processors(self, processors) -> None:
        # They edit a step's logits in place, which jitted JAX sampling cannot offer.
        names = ", ".join(type(p).__name__ for p in processors)
        raise ConfigError(
            f"the {self.name!r} backend does not run logits processors ({names}); use --backend cpu or cuda"
        )

    def sleep(self, level: int) -> None:
        """Level 1 drops the KV cache; level 2 the weights too (reloaded on ``wake_up``). Shapes
        and shardings stay the same, so the compiled steps stay valid."""
        import jax

        if self.runner.caches:
            self._cache_specs = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), self.runner.caches
            )
        self.runner.caches = ()
        if level >= 2:
            self.runner.params = None
        self.sleep_level = max(self.sleep_level, level)

    def wake_up(self) -> None:
        import jax
        import jax.numpy as jnp

        if not self.sleep_level:
            return
        if self.runner.params is None:
            self.runner.load()
        self.runner.caches = jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype, device=s.sharding), self._cache_specs
        )
        self.sleep_level = 0

    def load_embedding_model(self, model_dir: str) -> Embedder:
        from llmserve.backends.jax.bert import JaxEmbedder

        return JaxEmbedder(model_dir, platform=self.platform)

    def describe(self) -> str:
        import jax

        if self.runner is None:
            return f"{self.name} (jax {jax.__version__})"
        r = self.runner
        return (
            f"{self.name} (jax {jax.__version__}, {r.platform} x{r.tp}, "
            f"{len(r.compiled)} step buckets compiled in {r.compile_seconds:.1f} s)"
        )

    def shutdown(self) -> None:
        if self.runner is not None:
            self.runner.caches = ()
            self.runner.params = None


class TpuBackend(JaxBackend):
    """The JAX backend pinned to TPU devices; fails fast without them."""

    name = "tpu"
    description = "JAX on Google TPUs"
    platform = "tpu"

    @classmethod
    def check_available(cls, config) -> None:
        jax = _import_jax(cls.name)
        try:
            devices = jax.devices("tpu")
        except RuntimeError:
            devices = []
        if not devices:
            try:
                found = sorted({d.platform for d in jax.devices()})
            except RuntimeError:
                found = []
            raise BackendUnavailable(
                f"--backend tpu: no TPU devices found (JAX platforms here: {', '.join(found) or 'none'}); "
                "use --backend jax to run the JAX backend on this platform, or --backend cpu"
            )
        super().check_available(config)
