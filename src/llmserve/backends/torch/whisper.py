"""Whisper's encoder-decoder in torch, loaded from CTranslate2's model.bin (here) or from a
transformers safetensors directory (``whisper_hf``).

The decoder's self-attention keys and values live in the paged KV cache (``attention.py``'s layout,
blocks handed out by the engine's block manager), and the cross-attention keys and values of the
encoder output are computed once per window, so a decode step only projects the new token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmserve.backends.torch.attention import AttentionMetadata, paged_attention, write_kv
from llmserve.backends.torch.ct2_reader import CT2Model


@dataclass(frozen=True, slots=True)
class WhisperConfig:
    """Sizes of one Whisper model."""

    n_mels: int
    d_model: int
    n_heads: int
    encoder_layers: int
    decoder_layers: int
    vocab_size: int
    n_audio_ctx: int  # encoder positions (1500 for 30 s)
    n_text_ctx: int  # decoder positions (448)
    ffn_dim: int = 0  # 0: 4 * d_model

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn(self) -> int:
        return self.ffn_dim or 4 * self.d_model


def _linear(d_in: int, d_out: int, bias: bool = True) -> nn.Linear:
    return nn.Linear(d_in, d_out, bias=bias)


class FeedForward(nn.Module):
    """fc2(gelu(fc1(x)))."""

    def __init__(self, d: int, ffn: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = _linear(d, ffn)
        self.fc2 = _linear(ffn, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    b, t, d = x.shape  # [B, T, D] -> [B, H, T, hd]
    return x.view(b, t, n_heads, d // n_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, t, hd = x.shape
    return x.transpose(1, 2).reshape(b, t, h * hd)


class EncoderLayer(nn.Module):
    """Pre-norm self-attention block of the audio encoder (no mask)."""

    def __init__(self, d: int, n_heads: int, ffn: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.attn_norm = nn.LayerNorm(d)
        self.qkv = _linear(d, 3 * d)
        self.out = _linear(d, d)
        self.ffn = FeedForward(d, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_heads(t, self.n_heads) for t in self.qkv(self.attn_norm(x)).chunk(3, dim=-1))
        x = x + self.out(_merge(F.scaled_dot_product_attention(q, k, v)))
        return x + self.ffn(x)


class AudioEncoder(nn.Module):
    """[B, n_mels, 3000] log-mel -> [B, 1500, D]."""

    def __init__(self, cfg: WhisperConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.d_model, 3, padding=1)
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(cfg.n_audio_ctx, cfg.d_model), persistent=False)
        self.layers = nn.ModuleList(
            EncoderLayer(cfg.d_model, cfg.n_heads, cfg.ffn) for _ in range(cfg.encoder_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)  # [B, 1500, D]
        x = x + self.positions[: x.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class DecoderLayer(nn.Module):
    """Causal self-attention on the paged cache, cross-attention on the window's audio, FFN."""

    def __init__(self, d: int, n_heads: int, ffn: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.self_norm = nn.LayerNorm(d)
        self.self_qkv = _linear(d, 3 * d)
        self.self_out = _linear(d, d)
        self.cross_norm = nn.LayerNorm(d)
        self.cross_q = _linear(d, d)
        self.cross_kv = _linear(d, 2 * d)
        self.cross_out = _linear(d, d)
        self.ffn = FeedForward(d, ffn)

    def forward(self, x, kv_cache, meta: AttentionMetadata | None, cross) -> torch.Tensor:
        # x [B, T, D]: B decodes (T = 1) or one prompt (B = 1); kv_cache [blocks, block_size, 2, H, hd],
        # or None: plain causal attention over x alone; cross: (k, v) each [B, H, 1500, hd], or
        # for decodes (k, v) [W, H, 1500, hd] of W windows and (pad, unpad, m) grouping rows by window
        b, t, d = x.shape
        qkv = self.self_qkv(self.self_norm(x))
        if kv_cache is None:
            q, k, v = (_heads(p, self.n_heads) for p in qkv.chunk(3, dim=-1))
            attn = _merge(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        else:
            q, k, v = qkv.view(b * t, 3, self.n_heads, d // self.n_heads).unbind(1)  # [N, H, hd] each
            write_kv(kv_cache, meta.slot_mapping, torch.stack((k, v), dim=1))
            scale = (d // self.n_heads) ** -0.5
            attn = paged_attention(q, kv_cache, meta, scale).view(b, t, d)
        x = x + self.self_out(attn)
        q = self.cross_q(self.cross_norm(x))
        if len(cross) == 2:
            attn = _merge(F.scaled_dot_product_attention(_heads(q, self.n_heads), *cross))
        else:  # decodes grouped by window: rows ``pad`` [W * m] of q attend to window w's audio
            k, v, (pad, unpad, m) = cross
            q = q[:, 0].index_select(0, pad).view(k.shape[0], m, d)
            attn = _merge(F.scaled_dot_product_attention(_heads(q, self.n_heads), k, v))
            attn = attn.reshape(-1, d).index_select(0, unpad).view(b, 1, d)
        x = x + self.cross_out(attn)
        return x + self.ffn(x)

    def cross_keys_values(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.cross_kv(audio).chunk(2, dim=-1)
        return _heads(k, self.n_heads), _heads(v, self.n_heads)


class TextDecoder(nn.Module):
    """Token ids at given positions -> logits, reading and extending the paged caches."""

    def __init__(self, cfg: WhisperConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.register_buffer("positions", torch.zeros(cfg.n_text_ctx, cfg.d_model), persistent=False)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg.d_model, cfg.n_heads, cfg.ffn) for _ in range(cfg.decoder_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        self.proj = _linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, tokens, positions, kv_caches, meta, crosses) -> torch.Tensor:
        # tokens, positions [B, T]; kv_caches: one per layer, or None (whole sequences from
        # position 0, no cache); returns logits [B, T, V]
        x = self.embed(tokens) + self.positions[positions]
        caches = kv_caches if kv_caches is not None else [None] * len(self.layers)
        for layer, cache, cross in zip(self.layers, caches, crosses, strict=True):
            x = layer(x, cache, meta, cross)
        return self.proj(self.norm(x))


class Whisper(nn.Module):
    """Encoder plus decoder; ``CT2_NAMES`` maps our parameters to model.bin variables."""

    def __init__(self, cfg: WhisperConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = AudioEncoder(cfg)
        self.decoder = TextDecoder(cfg)

    def forward(self, mel: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Whole sequences at once: [B, n_mels, 3000] and [B, T] ids -> logits [B, T, V] (no
        cache; serving goes through ``WhisperRunner`` instead)."""
        audio = self.encoder(mel)
        b, t = tokens.shape
        crosses = [layer.cross_keys_values(audio) for layer in self.decoder.layers]
        positions = torch.arange(t, device=tokens.device).expand(b, t)
        return self.decoder(tokens, positions, None, None, crosses)

    # ours -> CTranslate2's, per layer kind ({i} is the layer index)
    CT2_GLOBAL = {
        "encoder.conv1": "encoder/conv1",
        "encoder.conv2": "encoder/conv2",
        "encoder.norm": "encoder/layer_norm",
        "decoder.norm": "decoder/layer_norm",
        "decoder.embed": "decoder/embeddings",
        "decoder.proj": "decoder/projection",
    }
    CT2_ENCODER_LAYER = {
        "attn_norm": "self_attention/layer_norm",
        "qkv": "self_attention/linear_0",
        "out": "self_attention/linear_1",
        "ffn.norm": "ffn/layer_norm",
        "ffn.fc1": "ffn/linear_0",
        "ffn.fc2": "ffn/linear_1",
    }
    CT2_DECODER_LAYER = {
        "self_norm": "self_attention/layer_norm",
        "self_qkv": "self_attention/linear_0",
        "self_out": "self_attention/linear_1",
        "cross_norm": "attention/layer_norm",
        "cross_q": "attention/linear_0",
        "cross_kv": "attention/linear_1",
        "cross_out": "attention/linear_2",
        "ffn.norm": "ffn/layer_norm",
        "ffn.fc1": "ffn/linear_0",
        "ffn.fc2": "ffn/linear_1",
    }
    _CT2_PARAMS = {"weight": "weight", "bias": "bias"}
    _CT2_NORM_PARAMS = {"weight": "gamma", "bias": "beta"}

    @classmethod
    def config_from_ct2(cls, ct2: CT2Model) -> WhisperConfig:
        def count(prefix: str) -> int:
            return sum(
                1 for n in ct2.variables if n.startswith(prefix) and n.endswith("/ffn/linear_0/weight")
            )

        conv = ct2.raw("encoder/conv1/weight")
        return WhisperConfig(
            n_mels=conv.shape[1],
            d_model=conv.shape[0],
            n_heads=int(ct2.raw("encoder/num_heads")),
            encoder_layers=count("encoder/"),
            decoder_layers=count("decoder/"),
            vocab_size=ct2.raw("decoder/embeddings/weight").shape[0],
            n_audio_ctx=ct2.raw("encoder/position_encodings/encodings").shape[0],
            n_text_ctx=ct2.raw("decoder/position_encodings/encodings").shape[0],
            ffn_dim=ct2.raw("encoder/layer_0/ffn/linear_0/weight").shape[0],
        )

    def _ct2_name(self, param: str) -> str:
        module, _, kind = param.rpartition(".")
        parts = module.split(".")
        if parts[1] == "layers":
            table = self.CT2_ENCODER_LAYER if parts[0] == "encoder" else self.CT2_DECODER_LAYER
            base = f"{parts[0]}/layer_{parts[2]}/{table['.'.join(parts[3:])]}"
        else:
            base = self.CT2_GLOBAL[module]
        is_norm = isinstance(self.get_submodule(module), nn.LayerNorm)
        return f"{base}/{(self._CT2_NORM_PARAMS if is_norm else self._CT2_PARAMS)[kind]}"

    @classmethod
    def from_ct2(cls, ct2: CT2Model, dtype: torch.dtype = torch.float32, device="cpu") -> Whisper:
        """Build the model from a parsed model.bin (float32, float16 or int8 variables)."""
        model = cls(cls.config_from_ct2(ct2))
        d = model.cfg.d_model
        with torch.no_grad():
            for name, param in model.named_parameters():
                value = torch.from_numpy(ct2.float32(model._ct2_name(name)))
                if value.shape != param.shape:
                    raise ValueError(
                        f"{name}: model.bin has shape {tuple(value.shape)}, want {tuple(param.shape)}"
                    )
                param.copy_(value)
            model.encoder.positions.copy_(
                torch.from_numpy(ct2.float32("encoder/position_encodings/encodings"))
            )
            model.decoder.positions.copy_(
                torch.from_numpy(ct2.float32("decoder/position_encodings/encodings"))
            )
            # Whisper's key projections have no bias: model.bin stores zeros there, checked here.
            bias = model.encoder.layers[0].qkv.bias[d : 2 * d]
            if not torch.all(bias == 0):
                raise ValueError("unexpected key bias in the encoder's fused projection")
        return model.to(device=device, dtype=dtype).eval()
