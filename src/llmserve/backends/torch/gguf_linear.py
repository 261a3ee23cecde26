"""``--quantization gguf``: a GGUF file's quantised linear tensors served as they are.

The decoder's projections are rebuilt as QuantLinear layers straight from the file's blocks,
never expanded to floats: Q8_0 becomes int8 with one float16 scale per 32 weights (and so does
Q5_0, whose 5-bit codes minus 16 are int8 values: 1 byte a weight instead of 0.69); Q4_0 and
Q4_1 become int4 with a scale and a minimum per 32 weights (Q4_0's minimum is ``-8 * scale``;
their nibble order is the kernel's own); Q4_K's super-blocks of 256 are split into their eight
32-weight sub-blocks, each with its own scale ``d * sc`` and minimum ``-dmin * m`` (rounded to
float16, the one difference from llama.cpp's float32 products) and its nibbles re-ordered.
Every other type (Q6_K, Q5_1, F16, F32, ...) and every tensor that is not a decoder
projection (embeddings, LM head, norms) stays as the float model loaded it. A fused projection
(q/k/v, gate/up) is quantised only when all its parts decode to the same width.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from llmserve.backends.torch.quant_linear import QuantLinear, pack_int4
from llmserve.sources.weights import WeightsNotFoundError

log = logging.getLogger(__name__)

GROUP = 32  # weights per scale in every layout here
# ggml type name -> bytes per block (of 32 weights; 256 for Q4_K)
BLOCK_BYTES = {"Q8_0": 34, "Q5_0": 22, "Q4_0": 18, "Q4_1": 20, "Q4_K": 144}

Decoded = tuple[int, np.ndarray, np.ndarray, np.ndarray | None]  # (bits, codes, scales, mins)


def _half(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte ``start`` of every block: [..., blocks]."""
    return np.ascontiguousarray(blocks[..., start : start + 2]).view(np.float16)[..., 0]


def decode_blocks(raw: np.ndarray, type_name: str, rows: int, cols: int) -> Decoded | None:
    """GGUF row data (uint8 [rows, bytes per row]) as QuantLinear buffers, or None for a type
    that stays float. int8: codes int8 [rows, cols]; int4: packed uint8 [rows, cols / 2];
    scales (and mins) float16 [rows, cols / 32]."""
    if type_name not in BLOCK_BYTES:
        return None
    decoded = _decode(raw, type_name, rows, cols)
    finite = all(np.isfinite(a).all() for a in decoded[2:] if a is not None)
    return decoded if finite else None  # a float16 overflow of d * sc or -8 * d: stays float


def _decode(raw: np.ndarray, type_name: str, rows: int, cols: int) -> Decoded:
    size = BLOCK_BYTES[type_name]
    blocks = np.asarray(raw, dtype=np.uint8).reshape(rows, -1, size)
    if type_name == "Q8_0":
        codes = np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(rows, cols)
        return 8, codes, _half(blocks, 0), None
    if type_name == "Q5_0":  # d * (q - 16), q of 5 bits: exactly int8 codes -16..15
        high = np.unpackbits(np.ascontiguousarray(blocks[..., 2:6]), axis=-1, bitorder="little")
        qs = blocks[..., 6:]
        low = np.concatenate([qs & 15, qs >> 4], axis=-1)  # weights 0-15, then 16-31
        codes = ((low | (high << 4)).astype(np.int8) - 16).reshape(rows, cols)
        return 8, codes, _half(blocks, 0), None
    if type_name in ("Q4_0", "Q4_1"):
        scales = _half(blocks, 0)
        offset = 2 if type_name == "Q4_0" else 4
        mins = (scales.astype(np.float32) * -8).astype(np.float16) if offset == 2 else _half(blocks, 2)
        codes = np.ascontiguousarray(blocks[..., offset:]).reshape(rows, cols // 2)
        return 4, codes, scales, mins
    return _decode_q4_k(blocks, rows, cols)


def q4_k_scale_min(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit (scale, min) pairs of each Q4_K super-block from its 12 packed bytes
    (bytes 0-3: scales 0-3 and the top bits of scales 4-7; 4-7: the same for mins; 8-11: the
    low nibbles of scales 4-7 and, high, of mins 4-7)."""
    d, m, low = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    scales = np.concatenate([d & 63, (low & 15) | ((d >> 2) & 48)], axis=-1)
    mins = np.concatenate([m & 63, (low >> 4) | ((m >> 2) & 48)], axis=-1)
    return scales, mins


def _decode_q4_k(blocks: np.ndarray, rows: int, cols: int) -> Decoded:
    # block: d, dmin (float16), 12 bytes of sub-block scales/mins, 128 bytes of nibbles in four
    # chunks of 32 bytes: chunk j's low nibbles are sub-block 2j, its high nibbles 2j + 1.
    d, dmin = _half(blocks, 0).astype(np.float32), _half(blocks, 2).astype(np.float32)
    sc, m = q4_k_scale_min(blocks[..., 4:16])
    scales = (d[..., None] * sc).astype(np.float16).reshape(rows, cols // GROUP)
    mins = (-(dmin[..., None] * m)).astype(np.float16).reshape(rows, cols // GROUP)
    qs = blocks[..., 16:].reshape(rows, -1, 4, 1, 32)
    codes = (qs >> np.array([0, 4], dtype=np.uint8).reshape(2, 1)) & 15  # [rows, blocks, 4, 2, 32]
    packed = pack_int4(torch.from_numpy(np.ascontiguousarray(codes.reshape(rows, cols))))
    return 4, packed.numpy(), scales, mins


def load_gguf_linears(model: nn.Module, reader) -> tuple[int, int]:
    """Replace the model's decoder projections by QuantLinears holding the blocks ``reader`` (a
    gguf.GGUFReader) reads; returns (layers replaced, projections left float by their GGUF type)."""
    from llmserve.sources.gguf import GGUF_ARCHITECTURES, TENSOR_NAMES, unpermute

    arch = reader.get_field("general.architecture").contents()
    permute = GGUF_ARCHITECTURES.get(arch, ("", "", False))[2]
    stacked: dict[str, tuple[str, int]] = getattr(model, "STACKED_PARAMS", {})
    shard_sizes: dict[str, tuple[int, ...]] = getattr(model, "shard_sizes", {})
    modules = dict(model.named_modules())
    parts: dict[str, dict[int, Decoded | None]] = {}
    for tensor in reader.tensors:
        base, _, suffix = tensor.name.rpartition(".")
        fields = base.split(".")
        if suffix != "weight" or fields[0] != "blk" or ".".join(fields[2:]) not in TENSOR_NAMES:
            continue
        key = ".".join(fields[2:])
        owner, _, proj = TENSOR_NAMES[key].format(n=fields[1]).rpartition(".")
        fused, shard = stacked.get(proj, (proj, 0))
        name = f"{owner}.{fused}"
        if type(modules.get(name)) is not nn.Linear:
            continue
        cols, rows = (int(n) for n in tensor.shape)
        decoded = decode_blocks(tensor.data, tensor.tensor_type.name, rows, cols)
        if decoded is not None and permute and key in ("attn_q", "attn_k"):
            heads = model.cfg.num_heads if key == "attn_q" else model.cfg.num_kv_heads
            decoded = (decoded[0], *(None if a is None else unpermute(a, heads) for a in decoded[1:]))
        parts.setdefault(name, {})[shard] = decoded
    replaced = kept = 0
    for name, shards in parts.items():
        linear = modules[name]
        decoded = [shards.get(i) for i in range(len(shard_sizes.get(name.rpartition(".")[2], (0,))))]
        if any(d is None for d in decoded) or len({d[0] for d in decoded}) != 1:
            kept += 1
            log.info("%s stays float: GGUF types it cannot keep (or of mixed widths)", name)
            continue
        bits = decoded[0][0]
        codes, scales = (torch.from_numpy(np.concatenate([d[i] for d in decoded])) for i in (1, 2))
        mins = None if bits == 8 else torch.from_numpy(np.concatenate([d[3] for d in decoded]))
        if codes.shape[0] != linear.out_features:
            raise WeightsNotFoundError(
                f"GGUF tensors for {name} have {codes.shape[0]} rows, the model {linear.out_features}"
            )
        owner, _, attr = name.rpartition(".")
        setattr(modules[owner], attr, QuantLinear(bits, codes, scales, mins, GROUP, linear.bias))
        replaced += 1
    return replaced, kept


def gguf_head(model: nn.Module, reader) -> QuantLinear | None:
    """The LM head from the file's own ``output`` blocks (``token_embd`` when tied), or None
    when their type is one the kernels do not take (quant_head then quantises the float head)."""
    tensors = {t.name: t for t in reader.tensors}
    tensor = tensors.get("output.weight") or tensors.get("token_embd.weight")
    linear = getattr(model, "lm_head", None)
    if tensor is None or type(linear) is not nn.Linear:
        return None
    cols, rows = (int(n) for n in tensor.shape)
    decoded = decode_blocks(tensor.data, tensor.tensor_type.name, rows, cols)
    if decoded is None or rows != linear.out_features or cols != linear.in_features:
        return None
    bits, codes, scales, mins = decoded
    as_tensor = None if mins is None else torch.from_numpy(mins)
    return QuantLinear(bits, torch.from_numpy(codes), torch.from_numpy(scales), as_tensor, GROUP, linear.bias)
