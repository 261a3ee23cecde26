"""The async front of an embedding (pooling) model."""

from __future__ import annotations

import asyncio

from llmserve.backends.base import Embedder


class EmbeddingService:
    """Tokenizer plus a loaded Embedder, run off the event loop one batch at a time."""

    def __init__(self, embedder: Embedder, model_dir: str) -> None:
        from transformers import AutoTokenizer

        self.embedder = embedder
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.dim = embedder.dim
        self.max_model_len = embedder.max_model_len
        self._lock = asyncio.Lock()

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    async def embed(self, token_ids: list[list[int]], normalize: bool = True) -> list[list[float]]:
        async with self._lock:
            return await asyncio.to_thread(self.embedder.embed, token_ids, normalize)
