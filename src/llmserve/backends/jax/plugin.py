"""Registers the JAX backends: ``jax`` (any JAX platform) and ``tpu`` (TPU devices only).

Importing this module does not import jax: the classes import it when used, so the plugin
loads (and ``llmserve plugins`` lists it) where jax is not installed.
"""

from __future__ import annotations

from llmserve import hookimpl


@hookimpl
def llmserve_backends(register):
    from llmserve.backends.jax.backend import JaxBackend, TpuBackend

    register("jax", JaxBackend)
    register("tpu", TpuBackend)
