"""bf16 linear layers with oneDNN-prepacked weights, for CPU decode.

``F.linear`` on a bf16 CPU tensor reorders the weight into oneDNN's blocked layout on every
call; packing it once at load makes small-batch matmuls (the whole of decode) ~1.7-2.5x faster
here, with the same results. With ``keep_weight`` the plain weight stays beside the packed one,
for the fused decode step's GEMV (decode_step.py), which at 1-3 rows reads it faster than
oneDNN runs the packed matmul (10.8 against 19.6 ms a SmolLM2 step on an AMX Xeon); the runner
drops it where the fused step does not apply.
"""

from __future__ import annotations

import torch
from torch import nn


class PackedLinear(nn.Module):
    """Drop-in for an ``nn.Linear`` whose weight was packed once for oneDNN."""

    def __init__(self, linear: nn.Linear, keep_weight: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.bias = linear.bias
        self.weight = linear.weight if keep_weight else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def pack_linears(model: nn.Module, keep_weight: bool = False) -> int:
    """Replace every plain bf16 ``nn.Linear`` on CPU by a PackedLinear; returns how many."""
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return 0
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
        and child.weight.dtype == torch.bfloat16
        and child.weight.device.type == "cpu"
    ]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear(child, keep_weight))
    return len(swaps)


def drop_plain_weights(model: nn.Module) -> None:
    """Forget the plain weights PackedLinear kept (a tied one stays with its embedding)."""
    for m in model.modules():
        if isinstance(m, PackedLinear):
            m.weight = None
