"""GGUF test material: Q4_K blocks built by hand (the gguf package cannot quantise to Q4_K) and a
SmolLM2 GGUF re-quantised to a mix of Q8_0, Q5_0, Q4_0, Q4_1, Q4_K and F16 tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, quants

from llmserve.sources.gguf import read_gguf


def quantize_q4_k(weight: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols a multiple of 256) -> Q4_K rows, uint8 [rows, cols / 256 * 144],
    from ggml's block layout: float16 d and dmin, 12 bytes of 6-bit sub-block scales and mins,
    128 bytes of nibbles; a weight is ``d * sc[j] * q - dmin * m[j]`` for its sub-block j."""
    rows, cols = weight.shape
    sub = weight.reshape(rows, cols // 256, 8, 32).astype(np.float32)
    low, high = np.minimum(sub.min(-1), 0), sub.max(-1)
    scale, minv = (high - low) / 15, -low  # per sub-block, both >= 0
    d = (scale.max(-1) / 63).astype(np.float16)
    dmin = (minv.max(-1) / 63).astype(np.float16)
    d32, dmin32 = d.astype(np.float32), dmin.astype(np.float32)
    safe_d, safe_dmin = np.where(d32 > 0, d32, 1), np.where(dmin32 > 0, dmin32, 1)
    sc = np.clip(np.round(scale / safe_d[..., None]), 0, 63).astype(np.uint8)
    m = np.clip(np.round(minv / safe_dmin[..., None]), 0, 63).astype(np.uint8)
    step, offset = (d32[..., None] * sc)[..., None], (dmin32[..., None] * m)[..., None]
    q = np.clip(np.round((sub + offset) / np.where(step > 0, step, 1)), 0, 15).astype(np.uint8)
    packed = np.concatenate(
        [
            (sc[..., :4] & 63) | ((sc[..., 4:] >> 4) << 6),
            (m[..., :4] & 63) | ((m[..., 4:] >> 4) << 6),
            (sc[..., 4:] & 15) | ((m[..., 4:] & 15) << 4),
        ],
        axis=-1,
    )
    q = q.reshape(rows, cols // 256, 4, 2, 32)  # chunk j: sub-blocks 2j (low) and 2j + 1 (high)
    nibbles = (q[..., 0, :] | (q[..., 1, :] << 4)).reshape(rows, cols // 256, 128)
    blocks = np.concatenate(
        [d[..., None].view(np.uint8), dmin[..., None].view(np.uint8), packed, nibbles], axis=-1
    )
    return np.ascontiguousarray(blocks.reshape(rows, -1))


# blk.<n>.<key> -> the type the mixed test GGUF stores it in (the rest keep the file's own)
MIXED_TYPES = {
    "attn_q": "Q8_0",
    "attn_k": "Q8_0",
    "attn_v": "Q8_0",
    "attn_output": "Q4_0",
    "ffn_down": "Q4_K",
}
# single tensors: an F16 part of layer 0's q/k/v and mixed widths in layer 1's gate/up (both must
# stay float), a Q5_0 o_proj in layer 2 (int8)
MIXED_EXCEPTIONS = {
    "blk.0.attn_v.weight": "F16",
    "blk.1.ffn_gate.weight": "Q8_0",
    "blk.2.attn_output.weight": "Q5_0",
}
KEPT_FLOAT = {"model.layers.0.self_attn.qkv_proj", "model.layers.1.mlp.gate_up_proj"}


def requantize(weight: np.ndarray, type_name: str) -> np.ndarray:
    """float32 [rows, cols] in ``type_name``'s GGUF row data."""
    if type_name == "Q4_K":
        return quantize_q4_k(weight)
    if type_name == "F16":
        return weight.astype(np.float16)
    return quants.quantize(weight, GGMLQuantizationType[type_name])


def write_mixed_gguf(source: Path, out: Path) -> Path:
    """``source`` (a GGUF) re-written with the decoder's projections in MIXED_TYPES."""
    reader = read_gguf(source)
    arch = reader.get_field("general.architecture").contents()
    writer = GGUFWriter(str(out), arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    for tensor in reader.tensors:
        key = ".".join(tensor.name.split(".")[2:-1])
        kind = MIXED_EXCEPTIONS.get(tensor.name) or (
            MIXED_TYPES.get(key) if tensor.name.startswith("blk.") else None
        )
        if kind is None:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)  # as stored
            continue
        weight = quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        data = requantize(weight, kind)
        raw = None if kind == "F16" else GGMLQuantizationType[kind]
        writer.add_tensor(tensor.name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
