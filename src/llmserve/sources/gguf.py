"""Convert a llama.cpp GGUF file into a plain HF directory (config, float32 safetensors, tokenizer).

Dequantising takes seconds, so ``llmserve pull`` converts once and every later start loads the
cached directory like any other HF model. Torch-free: numpy arrays go straight to safetensors.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmserve.arch.registry import UnsupportedModelError

# GGUF general.architecture -> (HF architecture, model_type, undo llama.cpp's Q/K rotary permutation)
GGUF_ARCHITECTURES: dict[str, tuple[str, str, bool]] = {
    "llama": ("LlamaForCausalLM", "llama", True),
    "mistral": ("MistralForCausalLM", "mistral", True),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", False),
    "qwen3": ("Qwen3ForCausalLM", "qwen3", False),
}

# llama.cpp tensor names -> HF names ("{n}" is the layer index).
TENSOR_NAMES: dict[str, str] = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_q": "model.layers.{n}.self_attn.q_proj",
    "attn_k": "model.layers.{n}.self_attn.k_proj",
    "attn_v": "model.layers.{n}.self_attn.v_proj",
    "attn_output": "model.layers.{n}.self_attn.o_proj",
    "attn_q_norm": "model.layers.{n}.self_attn.q_norm",
    "attn_k_norm": "model.layers.{n}.self_attn.k_norm",
    "ffn_gate": "model.layers.{n}.mlp.gate_proj",
    "ffn_up": "model.layers.{n}.mlp.up_proj",
    "ffn_down": "model.layers.{n}.mlp.down_proj",
    "attn_norm": "model.layers.{n}.input_layernorm",
    "ffn_norm": "model.layers.{n}.post_attention_layernorm",
}

# Metadata key (after "<arch>.") -> HF config key.
CONFIG_KEYS: dict[str, str] = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
}

_SHARD_BYTES = 2 << 30
SOURCE_FILE = "gguf_source.json"  # in a converted directory: the GGUF it came from


def read_gguf(path: str | Path) -> Any:
    """A ``gguf.GGUFReader`` of ``path`` whose fields and tensors view the mapped file as plain
    ndarrays: the same contents, parsed about 3x faster (a memmap view runs a Python hook, and a
    tokenizer's vocabulary takes some 500k views)."""
    return _plain_reader()(str(path))


@functools.cache
def _plain_reader() -> type:
    from gguf import GGUFReader

    class Reader(GGUFReader):
        @property
        def data(self) -> np.ndarray:
            return self._mapped

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._mapped = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    return Reader


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> Path:
    """Write config.json, generation_config.json, float32 safetensors and the tokenizer to ``out_dir``.

    The directory appears atomically (written to a temporary sibling, then renamed), so a
    crashed conversion never leaves a half-written model behind. Returns ``out_dir``.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    reader = read_gguf(gguf_path)
    config, generation = gguf_hf_config(reader)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_tensors(tmp, gguf_tensors(reader, config))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
        _save_tokenizer(gguf_path, tmp)
        record_source(tmp, gguf_path)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def record_source(model_dir: Path, gguf_path: Path) -> None:
    """Note in a converted directory which GGUF file (path and size) it was made from."""
    stat = Path(gguf_path).stat()
    record = {"path": str(Path(gguf_path).resolve()), "size": stat.st_size}
    (Path(model_dir) / SOURCE_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")


def gguf_source(model_dir: str | Path) -> Path | None:
    """The GGUF file a model directory was converted from, or None (not from a GGUF, or the
    file is gone): a GGUF pack's own file (fetched once if missing), else the recorded path
    when that file still has the recorded size."""
    from llmserve.sources import packs

    model_dir = Path(model_dir).resolve()
    for pack in packs.PACKS.values():
        if packs.pack_dir(pack).resolve() == model_dir and (
            pack.parts or pack.path_in_module.endswith(".gguf")
        ):
            return packs.ensure_gguf(pack.alias)
    try:
        record = json.loads((model_dir / SOURCE_FILE).read_text(encoding="utf-8"))
        path = Path(record["path"])
        return path if path.stat().st_size == record["size"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def gguf_hf_config(reader: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config.json dict, generation_config.json dict) built from the GGUF metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        supported = ", ".join(sorted(GGUF_ARCHITECTURES))
        raise UnsupportedModelError(f"GGUF architecture {arch!r} is not supported; supported: {supported}")
    hf_arch, model_type, _ = GGUF_ARCHITECTURES[arch]
    config: dict[str, Any] = {"architectures": [hf_arch], "model_type": model_type, "hidden_act": "silu"}
    for key, hf_key in CONFIG_KEYS.items():
        value = _field(reader, f"{arch}.{key}")
        if value is not None:
            config[hf_key] = value
    names = {t.name for t in reader.tensors}
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if "vocab_size" not in config:
        config["vocab_size"] = len(tokens) if tokens else _shape(reader, "token_embd.weight")[0]
    config.setdefault("num_key_value_heads", config["num_attention_heads"])
    if "head_dim" not in config:
        config["head_dim"] = _field(reader, f"{arch}.rope.dimension_count") or (
            config["hidden_size"] // config["num_attention_heads"]
        )
    config["tie_word_embeddings"] = "output.weight" not in names
    config["attention_bias"] = "blk.0.attn_q.bias" in names and model_type != "qwen2"
    if "rope_freqs.weight" in names:
        config["rope_scaling"] = _llama3_scaling(reader, config)
    config["torch_dtype"] = "float32"
    generation: dict[str, Any] = {}
    for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
        value = _field(reader, f"tokenizer.ggml.{key}")
        if value is not None:
            hf_key = "pad_token_id" if key == "padding_token_id" else key
            config[hf_key] = generation[hf_key] = int(value)
    eot = _field(reader, "tokenizer.ggml.eot_token_id")
    if eot is not None and eot != generation.get("eos_token_id"):
        generation["eos_token_id"] = [generation["eos_token_id"], int(eot)]
    return config, generation


def gguf_tensors(reader: Any, config: dict[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (HF name, float32 array) for every tensor, dequantised and un-permuted."""
    from gguf.quants import dequantize

    permute = GGUF_ARCHITECTURES[_field(reader, "general.architecture")][2]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    for tensor in reader.tensors:
        base, _, suffix = tensor.name.rpartition(".")
        if base == "rope_freqs":
            continue  # folded into config["rope_scaling"]
        parts = base.split(".")
        if parts[0] == "blk":
            layer, key = parts[1], ".".join(parts[2:])
        else:
            layer, key = "", base
        if key not in TENSOR_NAMES:
            raise UnsupportedModelError(f"unexpected GGUF tensor {tensor.name!r}")
        array = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if permute and key in ("attn_q", "attn_k"):
            array = unpermute(array, heads if key == "attn_q" else kv_heads)
        yield f"{TENSOR_NAMES[key].format(n=layer)}.{suffix}", np.ascontiguousarray(array)


def unpermute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Restore HF's [first half | second half] rotary layout of each head's rows: llama.cpp's
    convert script interleaves them (for its rope kernel). Same as transformers' GGUF loader;
    any trailing shape (float columns, quantised blocks, scales) moves with its row."""
    half = weight.shape[0] // n_head // 2
    return weight.reshape(n_head, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _llama3_scaling(reader: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Recover Llama 3.x rope_scaling from the stored per-frequency factors."""
    from gguf.quants import dequantize

    tensor = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    stored = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float64).reshape(-1)
    dim = config["head_dim"]
    inv = 1.0 / (config.get("rope_theta", 10000.0) ** (np.arange(0, dim, 2) / dim))
    for factor in (8.0, 16.0, 32.0, 4.0, 2.0):
        for original in (8192, 4096, 131072):
            params = {
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": original,
            }
            if np.allclose(inv / _llama3_inv_freq(inv, params), stored, rtol=1e-3):
                return params
    raise UnsupportedModelError("GGUF rope_freqs do not match any known Llama 3 rope scaling")


def _llama3_inv_freq(inv: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    low_wavelen = p["original_max_position_embeddings"] / p["low_freq_factor"]
    high_wavelen = p["original_max_position_embeddings"] / p["high_freq_factor"]
    wavelen = 2 * np.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / p["factor"], inv)
    smooth = (p["original_max_position_embeddings"] / wavelen - p["low_freq_factor"]) / (
        p["high_freq_factor"] - p["low_freq_factor"]
    )
    mid = (1 - smooth) * scaled / p["factor"] + smooth * scaled
    is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(is_mid, mid, scaled)


def _write_tensors(out: Path, tensors: Iterator[tuple[str, np.ndarray]]) -> None:
    """model.safetensors, or ~2 GiB shards plus model.safetensors.index.json for big models."""
    from safetensors.numpy import save_file

    shard: dict[str, np.ndarray] = {}
    shard_bytes = total = 0
    files: list[str] = []
    weight_map: dict[str, str] = {}

    def flush(name: str) -> None:
        save_file(shard, str(out / name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update(dict.fromkeys(shard, name))
        shard.clear()

    for name, array in tensors:
        if shard and shard_bytes + array.nbytes > _SHARD_BYTES:
            flush(f"model-{len(files) + 1:05d}.safetensors")
            shard_bytes = 0
        shard[name] = array
        shard_bytes += array.nbytes
        total += array.nbytes
    flush("model.safetensors" if not files else f"model-{len(files) + 1:05d}.safetensors")
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def _save_tokenizer(gguf_path: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.save_pretrained(str(out))


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    if field is None:
        return None
    return field.contents()


def _shape(reader: Any, name: str) -> tuple[int, ...]:
    tensor = next(t for t in reader.tensors if t.name == name)
    return tuple(int(d) for d in reversed(tensor.shape))
