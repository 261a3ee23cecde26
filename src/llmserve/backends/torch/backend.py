"""The torch backends: model runner + sampler behind the engine's Backend contract.

With ``--tensor-parallel-size N`` this process is rank 0: it starts ranks 1..N-1
(``tp_workers.TensorParallelDriver``), and every runner call it makes after loading (KV budget,
allocation, graph capture, forward) is first sent to them, so all ranks run the same collectives.
Only rank 0 samples.
"""

from __future__ import annotations

import torch

from llmserve.backends.base import Backend, BackendUnavailable, Batch, Embedder, ModelInfo, SampleResult
from llmserve.errors import ConfigError


class TorchBackend(Backend):
    """Shared by ``cpu`` and ``cuda``: they differ in device and in how the KV budget is found."""

    device = "cpu"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.check_available(config)
        self.runner = None
        self.sampler = None
        self.info: ModelInfo | None = None
        self.tp = None  # tp_workers.TensorParallelDriver with tensor_parallel_size > 1
        self.sleep_level = 0

    def load_model(self, model_dir: str) -> ModelInfo:
        from llmserve.backends.torch.runner import TorchModelRunner
        from llmserve.backends.torch.sampler import Sampler

        torch.manual_seed(self.config.seed)
        world, group, device = self.config.tensor_parallel_size, None, self.device
        if world > 1:
            from llmserve.arch.hf_config import load_arch_config
            from llmserve.backends.torch.tp_layers import TPGroup, check_tensor_parallel
            from llmserve.backends.torch.tp_workers import TensorParallelDriver

            check_tensor_parallel(load_arch_config(model_dir), world)
            if self.device == "cuda":
                torch.cuda.set_device(0)
                device = "cuda:0"
            self.tp = TensorParallelDriver(world, self.device, model_dir, self.config.dtype, True)
            group = TPGroup(0, world)
        self.runner = TorchModelRunner(
            model_dir,
            self.config.dtype,
            device,
            tp=group,
            quantization=self.config.quantization,
            group_size=self.config.quantization_group_size,
        )
        try:
            self.info = self.runner.load()  # while the workers load their shards
            if self.tp is not None:
                self.tp.connect()
        except BaseException:
            self.shutdown()
            raise
        self.sampler = Sampler(
            self.info.vocab_size,
            device=self.device,
            default_seed=self.config.seed,
            eos_token_ids=self.info.eos_token_ids,
        )
        if torch.device(self.device).type == "cuda":
            from llmserve.backends.torch.logits_masks import warm_up_bitmask_kernel

            warm_up_bitmask_kernel(
                self.info.vocab_size, self.device, torch.float32
            )  # the sampler works in float32
        return self.info

    def _on_all_ranks(self, method: str, *args):
        """``runner.<method>(*args)`` on every rank; rank 0's result."""
        if self.tp is not None:
            self.tp.send(method, *args)
        return getattr(self.runner, method)(*args)

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        self._on_all_ranks("allocate_kv_cache", num_blocks, block_size)

    def execute(self, batch: Batch) -> list[SampleResult]:
        if self.tp is not None:
            from llmserve.backends.torch.tp_workers import slim_batch

            self.tp.send("forward", slim_batch(batch))
        logits, prompt_logits = self.runner.forward(batch)
        sampling = [item for item in batch.items if item.sample]
        sampled = iter(self.sampler.sample(logits, sampling, batch.token_bitmask) if sampling else [])
        results = []
        for i, item in enumerate(batch.items):
            res = next(sampled) if item.sample else SampleResult(item.seq_id)
            if i in prompt_logits:
                res.prompt_logprobs = self.sampler.prompt_logprobs(prompt_logits[i], item)
            results.append(res)
        return results

    def set_logits_processors(self, processors) -> None:
        self.sampler.logits_processors = tuple(processors)

    def sleep(self, level: int) -> None:
        """Level 1 drops the KV cache (and CUDA graphs); level 2 the weights too, reloaded from
        the model directory on ``wake_up``. Every tensor-parallel rank does the same."""
        self._on_all_ranks("sleep", level)
        self.sleep_level = max(self.sleep_level, level)

    def wake_up(self) -> None:
        if not self.sleep_level:
            return
        num_blocks, block_size = self.runner.num_blocks, self.runner.block_size
        self._on_all_ranks("wake_up")
        self.allocate_kv_cache(num_blocks, block_size)  # CudaBackend recaptures its graphs here
        self.sleep_level = 0

    def load_embedding_model(self, model_dir: str) -> Embedder:
        from llmserve.backends.torch.embedder import TorchEmbedder

        return TorchEmbedder(model_dir, device=self.device)

    def load_transcription_model(self, model_dir: str):
        from llmserve.backends.torch.whisper_runner import WhisperRunner

        return WhisperRunner(model_dir, device=self.device, max_windows=min(self.config.max_num_seqs, 8))

    def describe(self) -> str:
        tp = f", tensor parallel x{self.config.tensor_parallel_size}" if self.tp is not None else ""
        quant = ""
        if self.config.quantization and self.runner is not None and self.runner.model is not None:
            from llmserve.backends.torch.quant_linear import linear_weight_bytes

            sizes = linear_weight_bytes(self.runner.model)
            quant = (
                f", {self.config.quantization} linears {sizes['quantized'] / 2**20:.1f} MiB"
                f" + float {sizes['float'] / 2**20:.1f} MiB"
            )
        return f"{self.name} (torch {torch.__version__}, {torch.get_num_threads()} threads{tp}{quant})"

    def failure(self) -> str | None:
        return self.tp.failure if self.tp is not None else None

    def shutdown(self) -> None:
        if self.tp is not None:
            self.tp.shutdown()
            self.tp = None


class CpuBackend(TorchBackend):
    name = "cpu"
    description = "torch on CPU"
    quantization_methods = ("int8", "int4", "gguf")

    @classmethod
    def check_available(cls, config) -> None:
        if config.quantization and config.tensor_parallel_size > 1:
            raise ConfigError("--quantization cannot be combined with --tensor-parallel-size > 1 yet")

    def kv_cache_budget_bytes(self, info: ModelInfo) -> int:
        return int(self.config.kv_cache_space * 2**30)


class CudaBackend(TorchBackend):
    name = "cuda"
    description = "torch on NVIDIA GPUs with Triton kernels"
    device = "cuda"

    @classmethod
    def check_available(cls, config) -> None:
        if not torch.cuda.is_available():
            raise BackendUnavailable("--backend cuda: no CUDA device found; use --backend cpu")
        if config.tensor_parallel_size > torch.cuda.device_count():
            raise BackendUnavailable(
                f"--tensor-parallel-size {config.tensor_parallel_size} needs as many GPUs; "
                f"{torch.cuda.device_count()} found"
            )

    def kv_cache_budget_bytes(self, info: ModelInfo) -> int:
        """Profiled: total * --gpu-memory-utilization - the peak of a max-size step (see
        TorchModelRunner.profile_kv_budget), the minimum over tensor-parallel ranks."""
        c = self.config
        return self._on_all_ranks(
            "profile_kv_budget",
            c.gpu_memory_utilization,
            c.max_num_batched_tokens,
            c.max_num_seqs,
            c.block_size,
            c.max_model_len or info.max_model_len,
        )

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        super().allocate_kv_cache(num_blocks, block_size)
        if not self.config.enforce_eager:
            max_len = self.config.max_model_len or self.info.max_model_len
            self._on_all_ranks("capture_decode_graphs", self.config.max_num_seqs, max_len)
