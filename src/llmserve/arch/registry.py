"""Architecture name -> model family and implementation class.

The table is plain data with no torch import, so a JAX backend can reuse the family lookup and
map families to its own classes. Torch classes are imported only when asked for.
"""

from __future__ import annotations

import importlib

from llmserve.errors import LLMServeError

# HF ``architectures[0]`` -> family. Every causal LM of the Llama family shares one module.
ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
    "Qwen3ForCausalLM": "llama",
    "BertModel": "bert",
}

# Families that produce embeddings rather than next-token logits.
ENCODER_FAMILIES = frozenset({"bert"})

TORCH_CLASSES: dict[str, str] = {
    "llama": "llmserve.backends.torch.llama:LlamaForCausalLM",
    "bert": "llmserve.backends.torch.bert:BertModel",
}


class UnsupportedModelError(LLMServeError):
    """The model's architecture has no implementation here."""

    status = 400
    type = "unsupported_model"


def model_family(architecture: str) -> str:
    """The family of ``architecture``; UnsupportedModelError names the supported ones."""
    family = ARCHITECTURES.get(architecture)
    if family is None:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedModelError(
            f"model architecture {architecture!r} is not supported; supported architectures: {supported}"
        )
    return family


def is_encoder(architecture: str) -> bool:
    return model_family(architecture) in ENCODER_FAMILIES


def torch_model_class(architecture: str) -> type:
    """The torch module class implementing ``architecture`` (imported lazily)."""
    module_name, _, class_name = TORCH_CLASSES[model_family(architecture)].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
