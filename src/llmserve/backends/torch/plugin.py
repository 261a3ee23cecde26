"""The built-in ``torch`` plugin: backends ``cpu`` and ``cuda`` and the torch model classes."""

from __future__ import annotations

from llmserve import hookimpl

# HF ``architectures[0]`` -> (family, torch class). Every Llama-family causal LM shares one module.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("llama", "llmserve.backends.torch.llama:LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "llmserve.backends.torch.llama:LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("llama", "llmserve.backends.torch.llama:LlamaForCausalLM"),
    "Qwen3ForCausalLM": ("llama", "llmserve.backends.torch.llama:LlamaForCausalLM"),
    "BertModel": ("bert", "llmserve.backends.torch.bert:BertModel"),
}

# Families that produce embeddings rather than next-token logits.
ENCODER_FAMILIES = frozenset({"bert"})


@hookimpl
def llmserve_backends(register):
    from llmserve.backends.torch.backend import CpuBackend, CudaBackend

    # --backend auto: cuda where a GPU is found, else cpu (always available).
    register("cpu", CpuBackend, auto_priority=10)
    register("cuda", CudaBackend, auto_priority=30)


@hookimpl
def llmserve_model_architectures(register):
    for architecture, (family, torch_class) in ARCHITECTURES.items():
        register(architecture, family, encoder=family in ENCODER_FAMILIES, torch=torch_class)
