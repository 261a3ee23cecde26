"""llmserve: a plugin-based LLM inference and serving framework."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("llmserve")

if TYPE_CHECKING:
    from llmserve.engine.sampling import SamplingParams
    from llmserve.offline import LLM

__all__ = ["LLM", "SamplingParams", "hookimpl", "__version__"]


def __getattr__(name: str):
    # Lazy: importing llmserve for the CLI or a plugin must not import torch.
    if name == "LLM":
        from llmserve.offline import LLM

        return LLM
    if name == "SamplingParams":
        from llmserve.engine.sampling import SamplingParams

        return SamplingParams
    raise AttributeError(name)
