"""BERT encoder (all-MiniLM and friends) in JAX, with mean / CLS / max / last-token pooling.

Post-norm transformer: ``h = LN(x + attn(x)); out = LN(h + ffn(h))``. Batches are padded to
power-of-two (batch, length) buckets, so compilations stay few; a key-padding mask keeps the
padding out of attention and pooling. Runs float32 on one device (the models are small).
"""

from __future__ import annotations

import functools
import logging
import re
import time
from typing import Any

import numpy as np

from llmserve.arch.hf_config import ArchConfig, load_arch_config
from llmserve.arch.registry import UnsupportedModelError, implementation, is_encoder
from llmserve.backends.base import Embedder
from llmserve.sources.weights import WeightsNotFoundError, iter_weights

log = logging.getLogger("llmserve.jax")

_MAX_BATCH = 32  # sequences per forward pass (inputs are sorted by length first)
_ACTIVATIONS = ("gelu", "relu", "gelu_new")

# Checkpoint name -> ours, applied in order (as backends/torch/bert.py).
RENAMES = (
    (r"^(bert\.)?embeddings\.LayerNorm\.", "embed_norm."),
    (r"^(bert\.)?embeddings\.", ""),
    (r"^(bert\.)?encoder\.layer\.", "layers."),
    (r"\.attention\.self\.", "."),
    (r"\.attention\.output\.dense\.", ".attn_out."),
    (r"\.attention\.output\.LayerNorm\.", ".attn_norm."),
    (r"\.intermediate\.dense\.", ".intermediate."),
    (r"\.output\.dense\.", ".out."),
    (r"\.output\.LayerNorm\.", ".out_norm."),
)
IGNORED_SUFFIXES = ("position_ids", "pooler.dense.weight", "pooler.dense.bias")
LINEARS = ("query", "key", "value", "attn_out", "intermediate", "out")  # stored [in, out]
NORMS = ("attn_norm", "out_norm")


def load_bert_params(model_dir: str, cfg: ArchConfig) -> dict[str, Any]:
    """float32 numpy parameters: embeddings + one dict per layer; every tensor exactly once."""
    top: dict[str, np.ndarray] = {}
    layers: list[dict[str, np.ndarray]] = [{} for _ in range(cfg.num_layers)]
    for name, tensor in iter_weights(model_dir, framework="numpy"):
        if name.endswith(IGNORED_SUFFIXES):
            continue
        for pattern, replacement in RENAMES:
            name = re.sub(pattern, replacement, name)
        array = np.asarray(tensor, dtype=np.float32)
        parts = name.split(".")
        if parts[0] == "layers" and len(parts) == 4 and int(parts[1]) < cfg.num_layers:
            module, kind = parts[2], parts[3]
            if module not in LINEARS + NORMS or kind not in ("weight", "bias"):
                raise WeightsNotFoundError(f"unexpected checkpoint tensor {name!r}")
            transpose = module in LINEARS and kind == "weight"
            layers[int(parts[1])][f"{module}.{kind}"] = np.ascontiguousarray(array.T if transpose else array)
        elif name in ("word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight",
                      "embed_norm.weight", "embed_norm.bias"):  # fmt: skip
            top[name] = array
        else:
            raise WeightsNotFoundError(f"unexpected checkpoint tensor {name!r}")
    need = {f"{m}.{k}" for m in LINEARS + NORMS for k in ("weight", "bias")}
    missing = [f"layers.{i}.{n}" for i, layer in enumerate(layers) for n in sorted(need - layer.keys())]
    missing += sorted(
        {"word_embeddings.weight", "position_embeddings.weight", "embed_norm.weight"} - top.keys()
    )
    if missing:
        raise WeightsNotFoundError(f"checkpoint lacks {len(missing)} tensors, e.g. {', '.join(missing[:5])}")
    if "token_type_embeddings.weight" not in top:
        top["token_type_embeddings.weight"] = np.zeros((1, cfg.hidden_size), np.float32)
    top.setdefault("embed_norm.bias", np.zeros(cfg.hidden_size, np.float32))
    return {**top, "layers": layers}


def _layer_norm(x: Any, p: dict, name: str, eps: float) -> Any:
    import jax.numpy as jnp

    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * p[f"{name}.weight"] + p[f"{name}.bias"]


def _dense(x: Any, p: dict, name: str) -> Any:
    return x @ p[f"{name}.weight"] + p[f"{name}.bias"]


def encode(params: dict, ids: Any, mask: Any, *, cfg: ArchConfig, pooling: str) -> Any:
    """Pooled (not normalised) float32 embeddings [B, hidden] of padded ``ids`` [B, L]."""
    import jax
    import jax.numpy as jnp

    act = {
        "gelu": functools.partial(jax.nn.gelu, approximate=False),
        "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
        "relu": jax.nn.relu,
    }[cfg.hidden_act]
    batch, length = ids.shape
    heads = cfg.num_heads
    head_dim = cfg.hidden_size // heads
    eps = cfg.layer_norm_eps
    x = params["word_embeddings.weight"][ids] + params["position_embeddings.weight"][:length][None]
    x = _layer_norm(x + params["token_type_embeddings.weight"][0], params, "embed_norm", eps)
    keep = mask.astype(bool)
    bias = jnp.where(keep, 0.0, -jnp.inf)[:, None, None, :]  # [B, 1, 1, L] key padding
    for p in params["layers"]:
        q, k, v = (_dense(x, p, n).reshape(batch, length, heads, head_dim) for n in ("query", "key", "value"))
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) * head_dim**-0.5 + bias
        attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), v).reshape(batch, length, -1)
        x = _layer_norm(x + _dense(attn, p, "attn_out"), p, "attn_norm", eps)
        x = _layer_norm(x + _dense(act(_dense(x, p, "intermediate")), p, "out"), p, "out_norm", eps)
    if pooling == "cls":
        return x[:, 0]
    if pooling == "last":
        return x[jnp.arange(batch), keep.sum(1) - 1]
    if pooling == "max":
        return jnp.where(keep[..., None], x, -jnp.inf).max(1)
    weights = keep[..., None].astype(x.dtype)
    return (x * weights).sum(1) / weights.sum(1)


class JaxEmbedder(Embedder):
    """A loaded BERT-family encoder: lists of token ids in, pooled (optionally L2-normalised) vectors out."""

    def __init__(self, model_dir: str, platform: str | None = None) -> None:
        import jax

        cfg = load_arch_config(model_dir)
        if not is_encoder(cfg.architecture):
            raise UnsupportedModelError(f"{cfg.architecture} is not an embedding model")
        implementation(cfg.architecture, "jax")
        if cfg.hidden_act not in _ACTIVATIONS:
            raise UnsupportedModelError(f"activation {cfg.hidden_act!r} is not supported")
        self.cfg = cfg
        self.device = jax.devices(platform)[0] if platform else jax.devices()[0]
        self.params = jax.device_put(load_bert_params(model_dir, cfg), self.device)
        self.pooling = cfg.pooling
        self.dim = cfg.hidden_size
        self.max_model_len = cfg.max_position_embeddings
        self.vocab_size = cfg.vocab_size
        self._fn = jax.jit(functools.partial(encode, cfg=cfg, pooling=cfg.pooling))
        self.compiled: dict[tuple[int, int], Any] = {}

    def embed(self, token_ids: list[list[int]], normalize: bool = True) -> list[list[float]]:
        import jax

        self.check_inputs(token_ids)
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
        results: list[list[float]] = [[] for _ in token_ids]
        for start in range(0, len(order), _MAX_BATCH):
            chunk = order[start : start + _MAX_BATCH]
            longest = max(len(token_ids[i]) for i in chunk)
            shape = (_pow2(len(chunk)), min(_pow2(longest), self.max_model_len))
            ids = np.zeros(shape, np.int32)
            mask = np.zeros(shape, np.int32)
            mask[len(chunk) :, 0] = 1  # padding rows attend to one token: no NaN, discarded
            for row, i in enumerate(chunk):
                ids[row, : len(token_ids[i])] = token_ids[i]
                mask[row, : len(token_ids[i])] = 1
            exe = self.compiled.get(shape)
            if exe is None:
                started = time.perf_counter()
                exe = self.compiled[shape] = self._fn.lower(self.params, ids, mask).compile()
                seconds = time.perf_counter() - started
                log.info("jax compile: embedder bucket batch=%d length=%d in %.2f s", *shape, seconds)
            pooled = np.asarray(jax.device_get(exe(self.params, ids, mask)), np.float32)[: len(chunk)]
            if normalize:
                pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
            for row, vector in zip(chunk, pooled.tolist(), strict=True):
                results[row] = vector
        return results


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()
