"""bf16 linear layers with oneDNN-prepacked weights, for CPU decode.

``F.linear`` on a bf16 CPU tensor reorders the weight into oneDNN's blocked layout on every
call; packing it once at load makes small-batch matmuls (the whole of decode) ~1.7-2.5x faster
here, with the same results.
"""

from __future__ import annotations

import torch
from torch import nn


class PackedLinear(nn.Module):
    """Drop-in for an ``nn.Linear`` whose weight was packed once for oneDNN."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def pack_linears(model: nn.Module) -> int:
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
        setattr(parent, name, PackedLinear(child))
    return len(swaps)
