"""The served models: every name a client may use, and one lookup for a request's ``model``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmserve.errors import ModelNotFoundError, UnsupportedError

if TYPE_CHECKING:
    from llmserve.engine.async_engine import AsyncEngine
    from llmserve.engine.embedding import EmbeddingService
    from llmserve.engine.transcription import TranscriptionService

GENERATE = "generate"
EMBED = "embed"
TRANSCRIBE = "transcribe"
DEFAULT_NAME = "default"  # names the first model (vllm-mlx's convention)

_API_NAMES = {
    EMBED: "the Embeddings API",
    GENERATE: "the generation APIs (completions, chat)",
    TRANSCRIBE: "the audio transcription and translation APIs",
}


@dataclass(eq=False)
class ServedModel:
    """One loaded model: its names, kind, tokenizer, limits and what runs it.

    ``engine`` is set for generative models, ``embedder`` for embedding (pooling) models,
    ``transcriber`` for speech-to-text models.
    ``generation_defaults`` are the sampling defaults from the model's generation_config.json.
    """

    name: str
    path: str
    kind: str
    tokenizer: Any
    max_model_len: int
    engine: AsyncEngine | None = None
    embedder: EmbeddingService | None = None
    transcriber: TranscriptionService | None = None
    aliases: tuple[str, ...] = ()
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    cache: dict[str, Any] = field(default_factory=dict)  # per-model values protocols compute once

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *(a for a in self.aliases if a != self.name))

    @property
    def capabilities(self) -> frozenset[str]:
        if self.engine is not None:
            return frozenset({GENERATE})
        if self.embedder is not None:
            return frozenset({EMBED})
        return frozenset({TRANSCRIBE} if self.transcriber is not None else ())

    def answer_name(self, requested: str | None) -> str:
        """The name to report back: the one the request used, when it is one of this model's."""
        return requested if requested and requested in self.names else self.name

    def supports(self, capability: str) -> bool:
        """Whether this model serves ``capability`` (GENERATE, EMBED or TRANSCRIBE)."""
        return capability in self.capabilities


class ModelRegistry:
    """The served models in order; the first is the default."""

    def __init__(self, models: list[ServedModel] | None = None) -> None:
        self._models: list[ServedModel] = []
        self._by_name: dict[str, ServedModel] = {}
        for model in models or ():
            self.add(model)

    def add(self, model: ServedModel) -> None:
        for name in model.names:
            if name in self._by_name or name == DEFAULT_NAME:
                raise ValueError(f"model name {name!r} is used twice")
        self._models.append(model)
        self._by_name.update(dict.fromkeys(model.names, model))

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset().union(*(m.capabilities for m in self._models))

    def get(self, name: str) -> ServedModel | None:
        """The model answering to ``name`` (any of its names), or None."""
        if name == DEFAULT_NAME:
            return self._models[0] if self._models else None
        return self._by_name.get(name)

    def first(self, capability: str | None) -> ServedModel | None:
        return next((m for m in self._models if capability is None or m.supports(capability)), None)

    def model_for(self, name: str | None, capability: str | None = GENERATE) -> ServedModel:
        """The model a request's ``model`` field names, for ``capability`` (None: any).

        Missing or empty: the first model with the capability (like vLLM). ``"default"``: the
        first model, or the first with the capability. Unknown: ModelNotFoundError (404). A model
        without the capability: UnsupportedError (400).
        """
        if not name or name == DEFAULT_NAME:
            model = self.first(capability)
            if model is None:
                what = f"serving {capability} requests " if capability else ""
                raise UnsupportedError(f"No model {what}is loaded.", param="model")
            return model
        model = self._by_name.get(name)
        if model is None:
            raise ModelNotFoundError(f"The model `{name}` does not exist.", param="model")
        if capability is not None and not model.supports(capability):
            api = _API_NAMES.get(capability, f"{capability} requests")
            raise UnsupportedError(f"The model `{name}` does not support {api}.", param="model")
        return model
