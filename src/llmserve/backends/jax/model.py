"""The Llama family in JAX: Llama 2/3, Mistral, Qwen2, Qwen3, SmolLM2 (one decoder, a few switches).

Parameters are a plain pytree: ``{"embed", "norm", "lm_head"?, "layers": [per-layer dict]}`` with
matmul weights stored ``[in, out]``, so a projection is ``x @ w``. q/k/v and gate/up stay separate
matrices so that each one shards over its own heads / columns (see sharding.py). The forward
pass is a pure function of (params, KV caches, step arrays) and is jitted by the runner.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from llmserve.arch.hf_config import ArchConfig
from llmserve.arch.registry import UnsupportedModelError
from llmserve.backends.jax.attention import paged_attention, write_kv
from llmserve.sources.weights import WeightsNotFoundError

# Checkpoint name (after "model.layers.N.") -> (our name, transpose to [in, out]).
LAYER_WEIGHTS: dict[str, tuple[str, bool]] = {
    "input_layernorm.weight": ("input_norm", False),
    "post_attention_layernorm.weight": ("post_norm", False),
    "self_attn.q_proj.weight": ("q", True),
    "self_attn.k_proj.weight": ("k", True),
    "self_attn.v_proj.weight": ("v", True),
    "self_attn.o_proj.weight": ("o", True),
    "self_attn.q_proj.bias": ("q_bias", False),
    "self_attn.k_proj.bias": ("k_bias", False),
    "self_attn.v_proj.bias": ("v_bias", False),
    "self_attn.o_proj.bias": ("o_bias", False),
    "self_attn.q_norm.weight": ("q_norm", False),
    "self_attn.k_norm.weight": ("k_norm", False),
    "mlp.gate_proj.weight": ("gate", True),
    "mlp.up_proj.weight": ("up", True),
    "mlp.down_proj.weight": ("down", True),
    "mlp.gate_proj.bias": ("gate_bias", False),
    "mlp.up_proj.bias": ("up_bias", False),
    "mlp.down_proj.bias": ("down_bias", False),
}
TOP_WEIGHTS: dict[str, tuple[str, bool]] = {
    "model.embed_tokens.weight": ("embed", False),
    "model.norm.weight": ("norm", False),
    "lm_head.weight": ("lm_head", True),
}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def layer_names(cfg: ArchConfig) -> set[str]:
    """The per-layer parameters ``cfg`` needs."""
    names = {"input_norm", "post_norm", "q", "k", "v", "o", "gate", "up", "down"}
    if cfg.qkv_bias:
        names |= {"q_bias", "k_bias", "v_bias"}
    if cfg.o_bias:
        names.add("o_bias")
    if cfg.mlp_bias:
        names |= {"gate_bias", "up_bias", "down_bias"}
    if cfg.qk_norm:
        names |= {"q_norm", "k_norm"}
    return names


def check_supported(cfg: ArchConfig) -> None:
    if cfg.hidden_act not in ("silu", "swish"):
        raise UnsupportedModelError(f"activation {cfg.hidden_act!r} is not supported")
    if cfg.num_heads % cfg.num_kv_heads:
        raise UnsupportedModelError(
            f"{cfg.num_heads} attention heads are not a multiple of {cfg.num_kv_heads} KV heads"
        )
    rope_type = (cfg.rope_scaling or {}).get("rope_type", "default")
    if rope_type not in ("default", "llama3", "linear"):
        raise UnsupportedModelError(f"rope scaling type {rope_type!r} is not supported")


def load_params(weights: Iterable[tuple[str, np.ndarray]], cfg: ArchConfig, dtype: Any) -> dict[str, Any]:
    """Host (numpy) parameters in ``dtype`` from checkpoint tensors; every parameter exactly once."""
    layers: list[dict[str, np.ndarray]] = [{} for _ in range(cfg.num_layers)]
    top: dict[str, np.ndarray] = {}
    for name, tensor in weights:
        if name.endswith(IGNORED_SUFFIXES) or (cfg.tie_word_embeddings and name == "lm_head.weight"):
            continue
        dest, key, transpose = _destination(name, layers, top)
        if key in dest:
            raise WeightsNotFoundError(f"checkpoint tensor {name!r} appears twice")
        array = np.asarray(tensor)
        dest[key] = np.ascontiguousarray(array.T if transpose else array).astype(dtype)
    need_top = {"embed", "norm"} | (set() if cfg.tie_word_embeddings else {"lm_head"})
    missing = sorted(need_top - top.keys())
    for i, layer in enumerate(layers):
        extra = layer.keys() - layer_names(cfg)
        if extra:
            raise WeightsNotFoundError(f"unexpected checkpoint tensors in layer {i}: {sorted(extra)}")
        missing += [f"layers.{i}.{n}" for n in sorted(layer_names(cfg) - layer.keys())]
    if missing:
        raise WeightsNotFoundError(f"checkpoint lacks {len(missing)} tensors, e.g. {', '.join(missing[:5])}")
    _check_shapes(top, layers, cfg)
    return {**top, "layers": layers}


def _destination(name: str, layers: list[dict], top: dict) -> tuple[dict, str, bool]:
    if name in TOP_WEIGHTS:
        key, transpose = TOP_WEIGHTS[name]
        return top, key, transpose
    parts = name.split(".", 3)  # model, layers, N, rest
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        index, rest = int(parts[2]), parts[3]
        if rest in LAYER_WEIGHTS and index < len(layers):
            key, transpose = LAYER_WEIGHTS[rest]
            return layers[index], key, transpose
    raise WeightsNotFoundError(f"unexpected checkpoint tensor {name!r}")


def _check_shapes(top: dict, layers: list[dict], cfg: ArchConfig) -> None:
    d, v, i = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    expected = {"embed": (v, d), "norm": (d,), "lm_head": (d, v)}
    per_layer = {
        "input_norm": (d,), "post_norm": (d,), "q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d),
        "q_bias": (q,), "k_bias": (kv,), "v_bias": (kv,), "o_bias": (d,),
        "q_norm": (cfg.head_dim,), "k_norm": (cfg.head_dim,),
        "gate": (d, i), "up": (d, i), "down": (i, d), "gate_bias": (i,), "up_bias": (i,), "down_bias": (d,),
    }  # fmt: skip
    found = [(k, a, expected[k]) for k, a in top.items()]
    found += [
        (f"layers.{n}.{k}", a, per_layer[k]) for n, layer in enumerate(layers) for k, a in layer.items()
    ]
    for name, array, shape in found:
        if array.shape != shape:
            raise WeightsNotFoundError(f"tensor {name} has shape {array.shape}, expected {shape}")


def rope_inv_freq(cfg: ArchConfig) -> np.ndarray:
    """float32 [head_dim / 2] rotary frequencies, with linear / llama3 scaling (as the torch backend)."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaling = cfg.rope_scaling or {}
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif rope_type == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
        original = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - low) / (high - low)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= original / high) & (wavelen <= original / low)
        inv_freq = np.where(is_mid, mid, scaled)
    return inv_freq.astype(np.float32)


def rms_norm(x: Any, weight: Any, eps: float) -> Any:
    """x / rms(x) * weight, computed in float32."""
    import jax
    import jax.numpy as jnp

    x32 = x.astype(jnp.float32)
    out = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (out * weight.astype(jnp.float32)).astype(x.dtype)


def apply_rope(x: Any, cos: Any, sin: Any) -> Any:
    """Rotate ``x`` [tokens, heads, head_dim] ("rotate half" layout); cos/sin [tokens, 1, head_dim]
    with sin carrying rotate_half's minus sign on its first half."""
    import jax.numpy as jnp

    half = x.shape[-1] // 2
    rotated = jnp.concatenate([x[..., half:], x[..., :half]], axis=-1)
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


def _linear(x: Any, p: dict, name: str) -> Any:
    y = x @ p[name]
    bias = p.get(f"{name}_bias")
    return y if bias is None else y + bias


def decoder_layer(
    x: Any, cache: tuple, p: dict, step: dict, cfg: ArchConfig, statics: dict
) -> tuple[Any, tuple]:
    """h = x + attn(norm(x)); out = h + mlp(norm(h)). Returns (out, updated (K, V) cache)."""
    import jax
    import jax.numpy as jnp

    tokens = x.shape[0]
    heads, kv_heads, head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    h = rms_norm(x, p["input_norm"], cfg.rms_norm_eps)
    q = _linear(h, p, "q").reshape(tokens, heads, head_dim)
    k = _linear(h, p, "k").reshape(tokens, kv_heads, head_dim)
    v = _linear(h, p, "v").reshape(tokens, kv_heads, head_dim)
    if cfg.qk_norm:
        q = rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
    q = apply_rope(q, step["cos"], step["sin"])
    k = apply_rope(k, step["cos"], step["sin"])
    k_cache, v_cache = write_kv(*cache, step["slots"], k, v)
    num_decode, num_tiles, tile = step["decode_pos"].shape[0], step["prefill_pos"].shape[0], statics["tile"]
    attend = functools.partial(
        paged_attention,
        chunk_blocks=statics["chunk_blocks"],
        scale=head_dim**-0.5,
        window=cfg.sliding_window,
    )
    outs = []
    if num_decode:
        qd = q[:num_decode].reshape(num_decode, 1, heads, head_dim)
        outs.append(
            attend(qd, k_cache, v_cache, step["decode_tables"], step["decode_pos"], step["decode_chunks"])
        )
    if num_tiles:
        qp = q[num_decode:].reshape(num_tiles, tile, heads, head_dim)
        outs.append(
            attend(qp, k_cache, v_cache, step["prefill_tables"], step["prefill_pos"], step["prefill_chunks"])
        )
    attn = outs[0] if len(outs) == 1 else jnp.concatenate(outs)
    h = x + _linear(attn, p, "o")
    m = rms_norm(h, p["post_norm"], cfg.rms_norm_eps)
    m = jax.nn.silu(_linear(m, p, "gate")) * _linear(m, p, "up")
    return h + _linear(m, p, "down"), (k_cache, v_cache)


def forward(params: dict, caches: tuple, step: dict, *, cfg: ArchConfig, statics: dict, inv_freq: np.ndarray):
    """One step: (updated caches, float32 logits [sample rows, vocab], hidden [tokens, hidden]).

    ``step`` holds the flat token arrays (input_ids, positions, slots), the tiles' tables and
    query positions, chunk counts, and ``sample_rows`` (rows whose logits are returned).
    """
    import jax.numpy as jnp

    x = params["embed"][step["input_ids"]]
    angles = step["positions"].astype(jnp.float32)[:, None] * jnp.asarray(inv_freq)[None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    step = {
        **step,
        "cos": jnp.concatenate([cos, cos], -1)[:, None],
        "sin": jnp.concatenate([-sin, sin], -1)[:, None],
    }
    new_caches = []
    for p, cache in zip(params["layers"], caches, strict=True):
        x, cache = decoder_layer(x, cache, p, step, cfg, statics)
        new_caches.append(cache)
    logits = compute_logits(params, x[step["sample_rows"]], cfg)
    return tuple(new_caches), logits, x


def compute_logits(params: dict, hidden: Any, cfg: ArchConfig) -> Any:
    """float32 logits [rows, vocab] of pre-norm hidden rows."""
    import jax.numpy as jnp

    h = rms_norm(hidden, params["norm"], cfg.rms_norm_eps)
    if cfg.tie_word_embeddings:
        logits = jnp.einsum("td,vd->tv", h, params["embed"], preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("td,dv->tv", h, params["lm_head"], preferred_element_type=jnp.float32)
    return logits.astype(jnp.float32)
