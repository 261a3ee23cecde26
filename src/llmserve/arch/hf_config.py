"""Parse a Hugging Face ``config.json`` into the few numbers our model code needs.

Plain Python (no torch): the torch and JAX backends share it. Handles both the transformers 4
layout (``rope_theta`` + ``rope_scaling``) and the transformers 5 one (``rope_parameters``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmserve.errors import LLMServeError


class ModelConfigError(LLMServeError):
    """A model directory whose config.json is missing or malformed."""

    status = 400
    type = "model_config_error"


@dataclass(frozen=True)
class ArchConfig:
    """Architecture hyper-parameters of one model, read from its HF directory."""

    architecture: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # None or a dict with "rope_type" ("linear", "llama3", ...) and its parameters.
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False)
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    torch_dtype: str | None = None
    # BERT-style encoders.
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 0
    pooling: str = "cls"

    @property
    def attention_bias(self) -> bool:
        return self.qkv_bias


def load_arch_config(model_dir: str | Path) -> ArchConfig:
    """Read config.json (+ generation_config.json, 1_Pooling/config.json) from ``model_dir``."""
    path = Path(model_dir)
    raw = _read_json(path / "config.json")
    if raw is None:
        raise ModelConfigError(f"no config.json in {path}")
    generation = _read_json(path / "generation_config.json") or {}
    pooling = _read_json(path / "1_Pooling" / "config.json")
    return parse_arch_config(raw, generation, pooling)


def parse_arch_config(
    raw: dict[str, Any], generation: dict[str, Any] | None = None, pooling: dict[str, Any] | None = None
) -> ArchConfig:
    """Build an ArchConfig from already-loaded JSON dicts."""
    archs = raw.get("architectures") or []
    if not archs:
        raise ModelConfigError("config.json has no 'architectures' entry")
    arch = archs[0]
    model_type = raw.get("model_type", "")
    try:
        hidden = int(raw["hidden_size"])
        heads = int(raw["num_attention_heads"])
        layers = int(raw["num_hidden_layers"])
    except KeyError as exc:
        raise ModelConfigError(f"config.json lacks {exc.args[0]!r}") from None
    kv_heads = int(raw.get("num_key_value_heads") or heads)
    head_dim = int(raw.get("head_dim") or hidden // heads)
    rope_theta, rope_scaling = _rope(raw)
    attention_bias = bool(raw.get("attention_bias", False))
    qkv_bias, o_bias = attention_bias, attention_bias
    if model_type == "qwen2":
        qkv_bias, o_bias = True, False  # Qwen2 always has q/k/v biases, never an o_proj bias
    sliding = None
    if model_type == "mistral":
        sliding = raw.get("sliding_window")
    elif raw.get("use_sliding_window"):
        raise ModelConfigError(f"{model_type} with use_sliding_window=true is not supported")
    eos = _ids(raw.get("eos_token_id")) + _ids((generation or {}).get("eos_token_id"))
    bos = raw.get("bos_token_id", (generation or {}).get("bos_token_id"))
    return ArchConfig(
        architecture=arch,
        model_type=model_type,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=int(raw.get("intermediate_size") or 4 * hidden),
        vocab_size=int(raw.get("vocab_size", 0)),
        max_position_embeddings=int(raw.get("max_position_embeddings") or 2048),
        hidden_act=raw.get("hidden_act", "silu"),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=bool(raw.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        sliding_window=int(sliding) if sliding else None,
        eos_token_ids=tuple(dict.fromkeys(eos)),
        bos_token_id=int(bos) if isinstance(bos, int) else None,
        torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
        layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
        type_vocab_size=int(raw.get("type_vocab_size", 0)),
        pooling=_pooling(pooling),
    )


def _rope(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from either rope_parameters (transformers 5) or rope_theta/rope_scaling."""
    params = dict(raw.get("rope_parameters") or {})
    scaling = dict(raw.get("rope_scaling") or {})
    theta = float(
        params.pop("rope_theta", None) or raw.get("rope_theta") or scaling.get("rope_theta") or 10000.0
    )
    merged = {**scaling, **params}
    merged.pop("rope_theta", None)
    rope_type = merged.pop("rope_type", None) or merged.pop("type", None) or "default"
    merged.pop("type", None)
    if rope_type == "default":
        return theta, None
    return theta, {"rope_type": rope_type, **merged}


def _pooling(pooling: dict[str, Any] | None) -> str:
    if not pooling:
        return "cls"
    for key, mode in (
        ("pooling_mode_mean_tokens", "mean"),
        ("pooling_mode_cls_token", "cls"),
        ("pooling_mode_max_tokens", "max"),
        ("pooling_mode_lasttoken", "last"),
    ):
        if pooling.get(key):
            return mode
    return "cls"


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelConfigError(f"cannot read {path}: {exc}") from None
