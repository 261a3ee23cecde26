"""Decode steps of a Llama-family model on CPU in one C call (csrc/decode_step.c).

A batch-1 decode step of SmolLM2 spent about 6 ms in Python dispatch around 330 small kernel
calls, as much as its weight reads under ``--quantization``. ``FusedDecode`` runs the layers'
loop in C over the same kernels (CpuKernels' norm, rotary, silu and paged attention, the
QuantLinear matmuls, and for float32 or bf16 weights ``linear_f32`` / ``linear_bf16``,
weight-streaming GEMVs that read faster than torch's F.linear at 1-3 rows), so the results are
the module path's up to float summation order. It applies to decode-only steps of models without
q/k norms, below ``max_rows`` sequences: a projection's ``dequant_rows`` when all are QuantLinear
(from there a matmul dequantises its weight), 4 when some are float32 or bf16 (from there torch's
matmul is faster). A float32 model may mix QuantLinear and float32 projections; a bf16 model's
are all bf16 (its activations stay bf16, rounded where the module path rounds). With a float32
or bf16 LM head it also computes the float32 logits of those rows. Everything else (prompt
chunks, quantised bf16 models, tensor parallelism) takes the module path.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from llmserve.backends.torch.attention import AttentionMetadata
from llmserve.backends.torch.cpu_kernels import CpuKernels, load_library
from llmserve.backends.torch.packed_linear import PackedLinear
from llmserve.backends.torch.quant_linear import _INT8_ROWS, QuantLinear, kernels

# The kernel table of decode_step.c, in its order; the first four live in cpu_kernels.c.
KERNELS = ("add_rms_norm", "silu_mul", "rope", "paged_decode")
QUANT_KERNELS = ("linear_int8", "linear_int8_q8", "linear_int4", "linear_int4_q8")
QUANT_KERNELS += ("linear_f32", "linear_bf16")  # the GEMVs
LIN_FIELDS, LAYER_FIELDS = 9, 3 + 4 * 9
FLOAT_ROWS = 4  # float32 / bf16 projections: the GEMV beats torch's matmul below this many rows
DTYPES = (torch.float32, torch.bfloat16)


def _is_float(p: nn.Module, dtype: torch.dtype = torch.float32) -> bool:
    """A plain float32 (or ``dtype``) projection with a contiguous weight (a PackedLinear counts
    while it keeps its plain weight)."""
    weight = p.weight if type(p) is nn.Linear or isinstance(p, PackedLinear) else None
    return weight is not None and weight.dtype == dtype and weight.is_contiguous()


def _fields(p: nn.Module) -> list[int]:
    """bits, weight, scales, mins, bias, N, K, G and int8 rows of one projection (decode_step.c's
    order; int8 rows: below this many rows x is quantised to int8, QuantLinear's rule)."""
    bias = 0 if p.bias is None else p.bias.data_ptr()
    if isinstance(p, QuantLinear):
        mins = 0 if p.mins is None else p.mins.data_ptr()
        int8_rows = _INT8_ROWS if p.int8_activations else 0
        return [p.bits, p.qweight.data_ptr(), p.scales.data_ptr(), mins, bias, p.out_features, p.in_features,
                p.group_size, int8_rows]  # fmt: skip
    bits = 16 if p.weight.dtype == torch.bfloat16 else 32
    return [bits, p.weight.data_ptr(), 0, 0, bias, p.out_features, p.in_features, 0, 0]


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, f32, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
    lib.decode_layers.restype = c_int
    lib.decode_layers.argtypes = (
        [ptr, ptr, i64, ptr] + [i64] * 6 + [f32] + [ptr] * 5 + [i64] * 2 + [f32, i64, c_int, c_int]
    )


def _projections(layer: nn.Module) -> list[nn.Module]:
    attn, mlp = layer.self_attn, layer.mlp
    return [attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj]


class FusedDecode:
    """The whole decoder of a float32, bf16 or quantised model, stepped in C for decode-only
    batches (and, for a float32 or bf16 LM head, the logits of 1-3 rows)."""

    def __init__(self, model: nn.Module, ops: CpuKernels, lib: ctypes.CDLL, dtype: torch.dtype) -> None:
        cfg, layers = model.cfg, list(model.model.layers)
        self.lib, self.bf16 = lib, int(dtype == torch.bfloat16)
        quant = kernels()
        addresses = [ctypes.cast(getattr(ops.lib, n), ctypes.c_void_p).value for n in KERNELS]
        addresses += [ctypes.cast(getattr(quant, n), ctypes.c_void_p).value for n in QUANT_KERNELS]
        self.kernels = (ctypes.c_void_p * len(addresses))(*addresses)
        self.table = (ctypes.c_int64 * (LAYER_FIELDS * len(layers)))()
        for i, layer in enumerate(layers):
            fields = [
                layer.input_layernorm.weight.data_ptr(),
                layer.post_attention_layernorm.weight.data_ptr(),
                0,
            ]
            for proj in _projections(layer):
                fields += _fields(proj)
            self.table[i * LAYER_FIELDS : (i + 1) * LAYER_FIELDS] = fields
        self.num_layers = len(layers)
        projections = [p for layer in layers for p in _projections(layer)]
        self.max_rows = min(p.dequant_rows if isinstance(p, QuantLinear) else FLOAT_ROWS for p in projections)
        self.shape = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size)
        self.gemv, self.gemv_bf16 = quant.linear_f32, quant.linear_bf16
        self.eps, self.scale = layers[0].input_layernorm.eps, layers[0].self_attn.scale
        self._caches: list[int] = []

    @classmethod
    def build(cls, model: nn.Module, ops, dtype: torch.dtype) -> FusedDecode | None:
        """A FusedDecode for ``model`` where it applies, else None (the module path runs)."""
        if not isinstance(ops, CpuKernels) or dtype not in DTYPES:
            return None
        # QuantLinear's kernels take float32 activations: a bf16 model's projections are all bf16.
        quant_ok = dtype == torch.float32

        def fits(p: nn.Module) -> bool:
            return (quant_ok and isinstance(p, QuantLinear)) or _is_float(p, dtype)

        layers = getattr(getattr(model, "model", None), "layers", None)
        if not layers or any(
            layer.self_attn.q_norm is not None
            or not all(fits(p) for p in _projections(layer))
            or layer.input_layernorm.weight.dtype != dtype
            for layer in layers
        ):
            return None
        lib = load_library("decode_step.c", _declare)
        return cls(model, ops, lib, dtype) if lib is not None else None

    def logits(self, head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """``head(hidden)`` for the normed final rows; a float32 or bf16 head at 1-3 rows by the
        GEMV (float32 logits either way)."""
        small = hidden.dim() == 2 and hidden.shape[0] < FLOAT_ROWS
        bf16 = _is_float(head, torch.bfloat16) and hidden.dtype == torch.bfloat16
        if not (small and (bf16 or (_is_float(head) and hidden.dtype == torch.float32))):
            return head(hidden)
        hidden = hidden.contiguous()
        out = torch.empty(hidden.shape[0], head.out_features)
        bias = None if head.bias is None else head.bias.data_ptr()
        args = (hidden.data_ptr(), head.weight.data_ptr(), bias, out.data_ptr(), hidden.shape[0],
                head.out_features, head.in_features)  # fmt: skip
        if bf16:
            scratch = torch.empty(hidden.shape)  # x widened to float32
            self.gemv_bf16(*args, 1, scratch.data_ptr(), torch.get_num_threads())
        else:
            self.gemv(*args, torch.get_num_threads())
        return out

    def applies(self, meta: AttentionMetadata, rows: int) -> bool:
        decode = meta.decode
        return (
            meta.prefill is None and decode is not None and decode.kernel is not None and rows < self.max_rows
        )

    def __call__(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # fmt: skip
        """Hidden states [rows, hidden] before the final norm, as the module path returns."""
        caches = [t.data_ptr() for t in kv_caches]
        if caches != self._caches:  # a new KV pool (allocate_kv_cache, wake_up)
            for i, address in enumerate(caches):
                self.table[i * LAYER_FIELDS + 2] = address
            self._caches = caches
        x = x.contiguous()  # the embedding lookup's own tensor: written in place
        cos, sin = rope
        decode, (hidden, heads, kv_heads, head_dim, inter) = meta.decode, self.shape
        ok = self.lib.decode_layers(
            ctypes.addressof(self.kernels), ctypes.addressof(self.table), self.num_layers, x.data_ptr(),
            x.shape[0], hidden, heads, kv_heads, head_dim, inter, self.eps, cos.data_ptr(), sin.data_ptr(), meta.slot_mapping.data_ptr(),
            decode.block_ids.data_ptr(), decode.context_lens.data_ptr(), decode.max_blocks,
            kv_caches[0].shape[1], self.scale, decode.window or 0, self.bf16, torch.get_num_threads(),
        )  # fmt: skip
        if not ok:
            raise MemoryError("decode step: no memory for its scratch buffers")
        return x
