"""The built-in ``jax`` plugin: backends ``jax`` (any JAX platform) and ``tpu`` (TPU devices only).

Importing this module does not import jax: the classes import it when used, so the plugin
loads (and ``llmserve plugins`` lists it) where jax is not installed.
"""

from __future__ import annotations

import importlib.util

from llmserve import hookimpl

# HF ``architectures[0]`` -> (family, JAX module). The Llama family shares one module.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("llama", "llmserve.backends.jax.model"),
    "MistralForCausalLM": ("llama", "llmserve.backends.jax.model"),
    "Qwen2ForCausalLM": ("llama", "llmserve.backends.jax.model"),
    "Qwen3ForCausalLM": ("llama", "llmserve.backends.jax.model"),
    "BertModel": ("bert", "llmserve.backends.jax.bert"),
}


@hookimpl
def llmserve_backends(register):
    from llmserve.backends.jax.backend import JaxBackend, TpuBackend

    # ``jax`` is never picked by --backend auto (on CPU it would shadow torch's cpu). ``tpu`` takes
    # part only where libtpu is installed, so a machine without it never imports jax to look.
    tpu_priority = 20 if importlib.util.find_spec("libtpu") is not None else None
    register("jax", JaxBackend)
    register("tpu", TpuBackend, auto_priority=tpu_priority)


@hookimpl
def llmserve_model_architectures(register):
    for architecture, (family, module) in ARCHITECTURES.items():
        register(architecture, family, encoder=family == "bert", jax=module)
