"""Registers the torch backends: ``cpu`` and ``cuda``."""

from __future__ import annotations

from llmserve import hookimpl


@hookimpl
def llmserve_backends(register):
    from llmserve.backends.torch.backend import CpuBackend, CudaBackend

    register("cpu", CpuBackend)
    register("cuda", CudaBackend)
