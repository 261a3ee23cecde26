"""Embeddings from an encoder model (BERT family) with the pooling its 1_Pooling config asks for."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmserve.arch.hf_config import load_arch_config
from llmserve.arch.registry import UnsupportedModelError, is_encoder
from llmserve.backends.base import Embedder
from llmserve.backends.torch.loader import load_model
from llmserve.backends.torch.runner import TORCH_DTYPES

# Sequences per forward pass; inputs are sorted by length first so padding stays small.
_MAX_BATCH = 32


class TorchEmbedder(Embedder):
    """A loaded encoder: lists of token ids in, pooled (optionally L2-normalised) vectors out."""

    def __init__(self, model_dir: str, device: str = "cpu", dtype: str = "float32") -> None:
        cfg = load_arch_config(model_dir)
        if not is_encoder(cfg.architecture):
            raise UnsupportedModelError(f"{cfg.architecture} is not an embedding model")
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = load_model(model_dir, cfg, TORCH_DTYPES[dtype], self.device)
        self.pooling = cfg.pooling
        self.dim = cfg.hidden_size
        self.max_model_len = cfg.max_position_embeddings
        self.vocab_size = cfg.vocab_size

    @torch.inference_mode()
    def embed(self, token_ids: list[list[int]], normalize: bool = True) -> list[list[float]]:
        self.check_inputs(token_ids)
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
        results: list[list[float]] = [[] for _ in token_ids]
        for start in range(0, len(order), _MAX_BATCH):
            chunk = order[start : start + _MAX_BATCH]
            length = max(len(token_ids[i]) for i in chunk)
            ids = torch.zeros(len(chunk), length, dtype=torch.long)
            mask = torch.zeros(len(chunk), length, dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, : len(token_ids[i])] = torch.tensor(token_ids[i])
                mask[row, : len(token_ids[i])] = 1
            pooled = self.model(ids.to(self.device), mask.to(self.device), self.pooling).float()
            if normalize:
                pooled = F.normalize(pooled, dim=-1)
            for row, vector in zip(chunk, pooled.cpu().tolist(), strict=True):
                results[row] = vector
        return results
