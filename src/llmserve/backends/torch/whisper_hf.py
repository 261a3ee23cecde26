"""Whisper from a transformers directory (``config.json`` + ``model.safetensors``, as
``WhisperForConditionalGeneration.save_pretrained`` writes it, or ``WhisperModel`` without the
``model.`` prefix). transformers keeps q/k/v apart; we fuse them, with the zero key bias Whisper has.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llmserve.backends.torch.whisper import Whisper, WhisperConfig
from llmserve.sources.weights import iter_weights

# ours -> transformers' (without the "model." prefix); {i} is the layer index
HF_GLOBAL = {
    "encoder.conv1": "encoder.conv1",
    "encoder.conv2": "encoder.conv2",
    "encoder.norm": "encoder.layer_norm",
    "decoder.norm": "decoder.layer_norm",
    "decoder.embed": "decoder.embed_tokens",
}
HF_ENCODER_LAYER = {
    "attn_norm": "self_attn_layer_norm",
    "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "out": "self_attn.out_proj",
    "ffn.norm": "final_layer_norm",
    "ffn.fc1": "fc1",
    "ffn.fc2": "fc2",
}
HF_DECODER_LAYER = {
    "self_norm": "self_attn_layer_norm",
    "self_qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_out": "self_attn.out_proj",
    "cross_norm": "encoder_attn_layer_norm",
    "cross_q": "encoder_attn.q_proj",
    "cross_kv": ("encoder_attn.k_proj", "encoder_attn.v_proj"),
    "cross_out": "encoder_attn.out_proj",
    "ffn.norm": "final_layer_norm",
    "ffn.fc1": "fc1",
    "ffn.fc2": "fc2",
}


def config_from_hf(config: dict) -> WhisperConfig:
    """Our sizes from transformers' WhisperConfig fields; what we do not implement is refused."""
    heads = config.get("encoder_attention_heads", 6)
    refused = {
        "decoder_attention_heads": (config.get("decoder_attention_heads", heads), heads),
        "decoder_ffn_dim": (config.get("decoder_ffn_dim"), config.get("encoder_ffn_dim")),
        "scale_embedding": (bool(config.get("scale_embedding", False)), False),
        "activation_function": (config.get("activation_function", "gelu"), "gelu"),
    }
    for name, (value, wanted) in refused.items():
        if value != wanted:
            raise ValueError(f"unsupported Whisper config: {name}={value!r} (this loader needs {wanted!r})")
    return WhisperConfig(
        n_mels=config.get("num_mel_bins", 80),
        d_model=config["d_model"],
        n_heads=heads,
        encoder_layers=config["encoder_layers"],
        decoder_layers=config["decoder_layers"],
        vocab_size=config["vocab_size"],
        n_audio_ctx=config.get("max_source_positions", 1500),
        n_text_ctx=config.get("max_target_positions", 448),
        ffn_dim=config.get("encoder_ffn_dim", 4 * config["d_model"]),
    )


def _hf_names(param: str) -> tuple[str, ...]:
    """transformers' tensor names that make up our parameter ``param`` (several when fused)."""
    module, _, kind = param.rpartition(".")
    parts = module.split(".")
    if parts[1] == "layers":
        table = HF_ENCODER_LAYER if parts[0] == "encoder" else HF_DECODER_LAYER
        sources = table[".".join(parts[3:])]
        prefix = f"{parts[0]}.layers.{parts[2]}."
    elif module == "decoder.proj":
        return ("proj_out.weight",)
    else:
        sources, prefix = HF_GLOBAL[module], ""
    sources = (sources,) if isinstance(sources, str) else sources
    return tuple(f"{prefix}{s}.{kind}" for s in sources)


def load_hf_whisper(model_dir: str | Path, dtype: torch.dtype = torch.float32, device="cpu") -> Whisper:
    """Build the model from a transformers Whisper directory (any float dtype on disk)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    model = Whisper(config_from_hf(config))
    tensors = {name.removeprefix("model."): t for name, t in iter_weights(model_dir)}
    if "proj_out.weight" not in tensors:  # tied to the token embedding, as Whisper is
        tensors["proj_out.weight"] = tensors["decoder.embed_tokens.weight"]
    with torch.no_grad():
        for name, param in model.named_parameters():
            parts = []
            for source in _hf_names(name):
                if source in tensors:
                    parts.append(tensors[source].float())
                elif source.endswith("k_proj.bias"):  # Whisper's keys have no bias
                    parts.append(torch.zeros(model.cfg.d_model))
                else:
                    raise ValueError(f"{model_dir}: no tensor {source!r} (for {name})")
            value = torch.cat(parts) if len(parts) > 1 else parts[0]
            if value.shape != param.shape:
                raise ValueError(
                    f"{name}: the checkpoint has shape {tuple(value.shape)}, want {tuple(param.shape)}"
                )
            param.copy_(value)
        model.encoder.positions.copy_(tensors["encoder.embed_positions.weight"].float())
        model.decoder.positions.copy_(tensors["decoder.embed_positions.weight"].float())
    return model.to(device=device, dtype=dtype).eval()
