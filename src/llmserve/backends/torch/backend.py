"""The torch backends: model runner + sampler behind the engine's Backend contract."""

from __future__ import annotations

import torch

from llmserve.backends.base import Backend, BackendUnavailable, Batch, Embedder, ModelInfo, SampleResult


class TorchBackend(Backend):
    """Shared by ``cpu`` and ``cuda``: they differ in device and in how the KV budget is found."""

    device = "cpu"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.check_available(config)
        self.runner = None
        self.sampler = None
        self.info: ModelInfo | None = None

    def load_model(self, model_dir: str) -> ModelInfo:
        from llmserve.backends.torch.runner import TorchModelRunner
        from llmserve.backends.torch.sampler import Sampler

        torch.manual_seed(self.config.seed)
        self.runner = TorchModelRunner(model_dir, self.config.dtype, self.device)
        self.info = self.runner.load()
        self.sampler = Sampler(
            self.info.vocab_size,
            device=self.device,
            default_seed=self.config.seed,
            eos_token_ids=self.info.eos_token_ids,
        )
        return self.info

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        self.runner.allocate_kv_cache(num_blocks, block_size)

    def execute(self, batch: Batch) -> list[SampleResult]:
        logits, prompt_logits = self.runner.forward(batch)
        sampling = [item for item in batch.items if item.sample]
        sampled = iter(self.sampler.sample(logits, sampling) if sampling else [])
        results = []
        for i, item in enumerate(batch.items):
            res = next(sampled) if item.sample else SampleResult(item.seq_id)
            if i in prompt_logits:
                res.prompt_logprobs = self.sampler.prompt_logprobs(prompt_logits[i], item)
            results.append(res)
        return results

    def load_embedding_model(self, model_dir: str) -> Embedder:
        from llmserve.backends.torch.embedder import TorchEmbedder

        return TorchEmbedder(model_dir, device=self.device)

    def describe(self) -> str:
        return f"{self.name} (torch {torch.__version__}, {torch.get_num_threads()} threads)"


class CpuBackend(TorchBackend):
    name = "cpu"
    description = "torch on CPU"

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

    def kv_cache_budget_bytes(self, info: ModelInfo) -> int:
        free, total = torch.cuda.mem_get_info()
        used = total - free
        return max(int(total * self.config.gpu_memory_utilization) - used, 0)
