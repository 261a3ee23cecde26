"""The LM head under ``--quantization``: int8 codes with a scale per 32 inputs (GGUF's Q8_0).

At batch 1 the float head is the largest single read of a decode step (SmolLM2: 49,152 x 576
float32 weights, 108 MiB, more than all its int4 projections together), so every quantisation
method keeps it quantised too: ``int8`` and ``int4`` quantise it to 8 bits (4-bit heads cost
too much accuracy; llama.cpp's Q4 files keep theirs at Q8_0 or Q6_K as well), ``gguf`` serves
the file's own ``output`` (or tied ``token_embd``) blocks when their type is one the kernels
take, else the same 8 bits. With tied embeddings the lookup reads the head's codes, so the
float embedding matrix is dropped. Below 4 rows the head, like every QuantLinear, quantises its
activations to int8 per 32 inputs (llama.cpp's Q8_0 x Q8_0 for its output matrix) and runs the
prefetching integer kernel: 1.6 against 3.0 ms at one row here, the float-activation tile read
the head's codes at half the rate.
"""

from __future__ import annotations

import torch
from torch import nn

from llmserve.backends.torch.quant_linear import QuantLinear, quantize_int8

GROUP = 32


class QuantEmbedding(nn.Module):
    """Token embeddings read from a QuantLinear's rows (the tied LM head's own codes)."""

    def __init__(self, head: QuantLinear, dtype: torch.dtype) -> None:
        super().__init__()
        self._head, self.dtype = (head,), dtype  # a tuple: the head stays the model's lm_head only

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        head, n = self._head[0], ids.numel()
        groups = head.in_features // head.group_size
        scales = head.scales[ids.reshape(-1)].float().view(n, groups, 1)
        codes = head.qweight[ids.reshape(-1)]
        if head.bits == 8:
            rows = codes.float().view(n, groups, -1) * scales
        else:  # packed blocks of 32: byte b holds weight b (low nibble) and b + 16 (high)
            blocks = codes.view(n, -1, 16)
            nibbles = torch.stack([blocks & 15, blocks >> 4], dim=2).view(n, groups, -1).float()
            rows = nibbles * scales + head.mins[ids.reshape(-1)].float().view(n, groups, 1)
        return rows.reshape(*ids.shape, head.in_features).to(self.dtype)


def quantize_head(model: nn.Module, head: QuantLinear | None = None) -> QuantLinear | None:
    """Make ``model.lm_head`` a QuantLinear (``head`` if given, else int8 per 32 inputs of the
    float head) and, with tied embeddings, the embedding lookup read from it. None (nothing
    changed) for a model without a float ``lm_head`` or with inputs not a multiple of 32."""
    linear = getattr(model, "lm_head", None)
    if type(linear) is not nn.Linear or linear.in_features % GROUP:
        return None
    embed = model.model.embed_tokens
    tied = linear.weight is embed.weight
    if head is None:
        head = QuantLinear(8, *quantize_int8(linear.weight.detach(), GROUP), None, GROUP, linear.bias)
    model.lm_head = head
    if tied:
        model.model.embed_tokens = QuantEmbedding(head, embed.weight.dtype)
    return head
