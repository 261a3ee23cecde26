"""Prepacked bf16 linears give the same answers as F.linear, and the CPU runner uses them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmserve.backends.torch.packed_linear import PackedLinear, pack_linears

pytestmark = pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no native bf16 on this CPU"
)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_same_result_as_linear(bias, rows):
    torch.manual_seed(0)
    linear = nn.Linear(96, 160, bias=bias).to(torch.bfloat16)
    x = torch.randn(rows, 96, dtype=torch.bfloat16)
    expected = linear(x).float()
    got = PackedLinear(linear)(x).float()
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=0.05, rtol=0.02)


def test_only_plain_bf16_linears_are_packed():
    class Custom(nn.Linear):
        pass

    model = nn.Sequential(
        nn.Linear(8, 8).to(torch.bfloat16), nn.Linear(8, 8), Custom(8, 8).to(torch.bfloat16)
    )
    assert pack_linears(model) == 1
    assert isinstance(model[0], PackedLinear) and type(model[1]) is nn.Linear and type(model[2]) is Custom


def test_cpu_runner_packs_its_linears(smollm2_dir):
    from llmserve.backends.torch.runner import TorchModelRunner

    runner = TorchModelRunner(str(smollm2_dir), "bfloat16")
    runner.load()
    packed = [m for m in runner.model.modules() if isinstance(m, PackedLinear)]
    assert len(packed) >= 30 * 4  # qkv, o, gate_up, down in every layer


def test_plain_weights_kept_only_for_the_fused_step(smollm2_dir):
    """The fused decode step reads the plain weights; where it is off, the runner drops them."""
    from llmserve.backends.torch.runner import TorchModelRunner

    fused = TorchModelRunner(str(smollm2_dir), "bfloat16")
    fused.load()
    plain = TorchModelRunner(str(smollm2_dir), "bfloat16", use_kernels=False)
    plain.load()
    assert fused.model.fused_decode is not None and plain.model.fused_decode is None
    layer = fused.model.model.layers[0].mlp.down_proj
    assert isinstance(layer, PackedLinear) and layer.weight is not None
    assert all(m.weight is None for m in plain.model.modules() if isinstance(m, PackedLinear))


def test_plain_weights_dropped_where_the_fused_step_is_refused(smollm2_dir, monkeypatch):
    from llmserve.backends.torch.decode_step import FusedDecode
    from llmserve.backends.torch.runner import TorchModelRunner

    monkeypatch.setattr(
        FusedDecode, "build", classmethod(lambda cls, *a: None)
    )  # e.g. a model with q/k norms
    runner = TorchModelRunner(str(smollm2_dir), "bfloat16")
    runner.load()
    packed = [m for m in runner.model.modules() if isinstance(m, PackedLinear)]
    assert packed and all(m.weight is None for m in packed)
