"""Weight-only quantised linear layers on CPU: ``--quantization int8 | int4 | gguf``.

int8 keeps one scale per output channel, int4 a scale and a minimum per group of
``--quantization-group-size`` inputs (asymmetric, like GGUF Q4_1); gguf keeps a GGUF file's
Q8_0 / Q4_0 / Q4_1 / Q4_K blocks as they are (re-laid out, never expanded to floats). The LM
head is quantised by quant_head.py. Below ``_INT8_ROWS`` rows the activations are quantised to
int8 too (integer dot products, see csrc); from there they stay float32.

The matmuls are our C kernels (csrc/quant_kernels.c): torch's own CPU weight-only kernels
(``_weight_int8pack_mm``, ``_weight_int4pack_mm_for_cpu``) exist in torch 2.13 but ran 15-60x
slower than a float32 ``F.linear`` on this project's AVX2 machine, measured. Prompt chunks of
``DEQUANT_ROWS[bits]`` rows or more dequantise the weight into a scratch float32 matrix and use
the float matmul, which is faster there (measured per width on SmolLM2's shapes).
"""

from __future__ import annotations

import ctypes
import logging

import torch
import torch.nn.functional as F
from torch import nn

from llmserve.backends.torch.cpu_kernels import load_library
from llmserve.errors import ConfigError

log = logging.getLogger(__name__)

METHODS = ("int8", "int4", "gguf")
# In the model (SmolLM2, batch 32) the tiles beat dequantising for both widths, though a lone
# int4 layer with its weight hot in cache dequantises faster from about 20 rows.
DEQUANT_ROWS = {8: 64, 4: 64}
_INT8_ROWS = 4  # below this many rows x is quantised to int8 (integer dot products): faster there


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    signatures = {
        "linear_int8": [ptr] * 5 + [i64] * 4 + [c_int],
        "linear_int4": [ptr] * 6 + [i64] * 4 + [c_int],
        "dequant_int8": [ptr] * 3 + [i64] * 4 + [c_int],
        "dequant_int4": [ptr] * 4 + [i64] * 4 + [c_int],
        "linear_int8_q8": [ptr] * 5 + [i64] * 4 + [c_int],
        "linear_int4_q8": [ptr] * 6 + [i64] * 4 + [c_int],
        "linear_f32": [ptr] * 4 + [i64] * 3 + [c_int],  # float32 GEMV for decode_step.py
        "linear_bf16": [ptr] * 4 + [i64] * 3 + [c_int, ptr, c_int],  # and its bf16 one
    }
    for name, args in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = (c_int if name.endswith("_q8") else None), args


def kernels() -> ctypes.CDLL:
    """The compiled quantised-matmul library; ConfigError where it cannot be built."""
    lib = load_library("quant_kernels.c", _declare)
    if lib is None:
        raise ConfigError("--quantization needs a C compiler (cc or $CC) to build its CPU kernels")
    return lib


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class QuantLinear(nn.Module):
    """A linear layer whose weight is kept as int8 (``bits=8``) or packed int4 (``bits=4``).

    ``qweight``: int8 [N, K], or uint8 [N, K / 2] in 32-weight blocks (byte b: weight b low
    nibble, weight b + 16 high nibble). ``scales`` / ``mins``: float16 [N, K / group_size];
    a weight is ``q * scale`` (int8) or ``q * scale + min`` (int4, q in 0..15).
    """

    def __init__(
        self,
        bits: int,
        qweight: torch.Tensor,
        scales: torch.Tensor,
        mins: torch.Tensor | None,
        group_size: int,
        bias: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.bits, self.group_size = bits, group_size
        self.out_features = qweight.shape[0]
        self.in_features = qweight.shape[1] * (2 if bits == 4 else 1)
        if self.in_features % group_size or group_size % (32 if bits == 4 else 8):
            raise ConfigError(
                f"--quantization-group-size {group_size} must divide the layer's {self.in_features} "
                f"inputs and be a multiple of {32 if bits == 4 else 8}"
            )
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scales", scales.to(torch.float16).contiguous())
        self.register_buffer("mins", None if mins is None else mins.to(torch.float16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.lib = kernels()
        # Integer dot products on x quantised per 32 inputs (see csrc): for K, G multiples of 32.
        self.int8_activations = self.in_features % 32 == 0 and group_size % 32 == 0
        self.dequant_rows = DEQUANT_ROWS[bits]
        self._bind()

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int) -> QuantLinear:
        """Quantise a float linear layer: int8 per output channel, int4 per group."""
        weight = linear.weight.detach().float()
        if bits == 8:
            qweight, scales = quantize_int8(weight)
            return cls(8, qweight, scales, None, weight.shape[1], linear.bias)
        if weight.shape[1] % group_size:
            raise ConfigError(
                f"--quantization-group-size {group_size} does not divide a layer's {weight.shape[1]} "
                "inputs; pick one that does (32, 64 or 128)"
            )
        return cls(4, *quantize_int4(weight, group_size), group_size, linear.bias)

    def weight_bytes(self) -> int:
        """Bytes of the stored weight with its scales (and mins)."""
        return sum(
            t.numel() * t.element_size() for t in (self.qweight, self.scales, self.mins) if t is not None
        )

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K] these codes stand for."""
        out = torch.empty(self.out_features, self.in_features)
        self._dequant_rows(out, 0, self.out_features)
        return out

    def _dequant_rows(self, out: torch.Tensor, n0: int, n1: int) -> None:
        K, G, threads = self.in_features, self.group_size, torch.get_num_threads()
        if self.bits == 8:
            self.lib.dequant_int8(_ptr(self.qweight), _ptr(self.scales), _ptr(out), n0, n1, K, G, threads)
        else:
            args = (_ptr(self.qweight), _ptr(self.scales), _ptr(self.mins), _ptr(out), n0, n1, K, G, threads)
            self.lib.dequant_int4(*args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype, K = x.dtype, self.in_features
        x2 = x if x.dim() == 2 and dtype == torch.float32 else x.reshape(-1, K).to(torch.float32)
        x2 = x2.contiguous()
        rows = x2.shape[0]
        if rows >= self.dequant_rows:
            out = F.linear(x2, self.dequantize(), self.bias)
        else:
            out = torch.empty(rows, self.out_features)
            shape = (rows, self.out_features, K, self.group_size, torch.get_num_threads())
            args = (x2.data_ptr(), *self._weights, out.data_ptr(), *shape)
            if not (rows < _INT8_ROWS and self.int8_activations and self._int8_kernel(*args)):
                self._kernel(*args)  # float activations (also where the int8 scratch failed)
        if x.dim() == 2 and dtype == torch.float32:
            return out
        return out.to(dtype).view(*x.shape[:-1], self.out_features)

    def _bind(self) -> None:
        """The kernels and the weight buffers' addresses (the buffers never move: CPU only)."""
        lib = self.lib
        if self.bits == 8:
            self._weights = (_ptr(self.qweight), _ptr(self.scales), _ptr(self.bias))
            self._kernel, self._int8_kernel = lib.linear_int8, lib.linear_int8_q8
        else:
            self._weights = (_ptr(self.qweight), _ptr(self.scales), _ptr(self.mins), _ptr(self.bias))
            self._kernel, self._int8_kernel = lib.linear_int4, lib.linear_int4_q8

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int{self.bits}, group={self.group_size}"


def quantize_int8(weight: torch.Tensor, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes [N, K], float16 scales [N, K / group_size]): symmetric, one scale per group of
    inputs (per output channel when ``group_size`` is None)."""
    n, k = weight.shape
    blocks = weight.float().view(n, -1, group_size or k)
    scales = (blocks.abs().amax(-1) / 127).to(torch.float16)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero row stays zero
    codes = torch.round(blocks / scales.float()[..., None]).clamp_(-127, 127).to(torch.int8)
    return codes.view(n, k), scales


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed uint8 [N, K / 2], float16 scales and mins [N, K / group]): per group of inputs,
    the 16 levels span the group's min..max."""
    n, k = weight.shape
    groups = weight.view(n, k // group_size, group_size)
    low, high = groups.amin(-1), groups.amax(-1)
    mins = low.to(torch.float16)
    scales = ((high - mins.float()) / 15).to(torch.float16)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round((groups - mins.float()[..., None]) / scales.float()[..., None]).clamp_(0, 15)
    return pack_int4(codes.to(torch.uint8).view(n, k)), scales, mins


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [N, K] (0..15) -> [N, K / 2] in the kernels' 32-weight block order."""
    n, k = codes.shape
    blocks = codes.view(n, k // 32, 2, 16)
    return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(n, k // 2)


def quantize_linears(model: nn.Module, method: str, group_size: int) -> int:
    """Replace every float ``nn.Linear`` but the LM head by a QuantLinear; returns how many."""
    if method not in ("int8", "int4"):
        raise ConfigError(f"--quantization must be one of {', '.join(METHODS)}; got {method!r}")
    bits = 8 if method == "int8" else 4
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and name != "lm_head"
    ]
    for parent, name, child in swaps:
        setattr(parent, name, QuantLinear.from_linear(child, bits, group_size))
    return len(swaps)


def linear_weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes held by the quantised linears and by the float ones (LM head included, counted
    once even when tied to the embeddings)."""
    quant = sum(m.weight_bytes() for m in model.modules() if isinstance(m, QuantLinear))
    seen, dense = set(), 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.weight.data_ptr() not in seen:
            seen.add(m.weight.data_ptr())
            dense += m.weight.numel() * m.weight.element_size()
    return {"quantized": quant, "float": dense}
