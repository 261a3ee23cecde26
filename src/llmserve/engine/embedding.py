"""The async front of an embedding (pooling) model; the model runs on the device thread."""

from __future__ import annotations

import asyncio

from llmserve.backends.base import Embedder
from llmserve.engine.device_thread import device_thread
from llmserve.sources.tokenizer import load_tokenizer


class EmbeddingService:
    """Tokenizer plus a loaded Embedder, run off the event loop one batch at a time."""

    def __init__(self, embedder: Embedder, model_dir: str) -> None:
        self.embedder = embedder
        self.tokenizer = load_tokenizer(model_dir)
        self.dim = embedder.dim
        self.max_model_len = embedder.max_model_len

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    async def embed(self, token_ids: list[list[int]], normalize: bool = True) -> list[list[float]]:
        return await asyncio.wrap_future(device_thread().submit(self.embedder.embed, token_ids, normalize))
