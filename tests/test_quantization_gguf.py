"""--quantization gguf: each GGUF block type decoded against the gguf package's own dequantiser,
the layers against F.linear, a mixed-type GGUF model against its float conversion, the refusals."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, quants
from gguf_blocks import KEPT_FLOAT, MIXED_TYPES, quantize_q4_k, requantize, write_mixed_gguf

from llmserve.backends.base import Batch, BatchItem
from llmserve.backends.torch.gguf_linear import decode_blocks
from llmserve.backends.torch.quant_linear import QuantLinear
from llmserve.backends.torch.runner import TorchModelRunner
from llmserve.config import Config
from llmserve.errors import ConfigError
from llmserve.server.startup import check_config
from llmserve.sources import packs
from llmserve.sources.gguf import convert_gguf_to_hf

TYPES = ["Q8_0", "Q5_0", "Q4_0", "Q4_1", "Q4_K"]


def _weight(rows: int = 24, cols: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
    weight[3, :256] = 0  # an all-zero (super-)block
    weight[5] += 0.3  # a row far from zero: Q4_K's minimum clamps at 0
    return weight


def _layer(type_name: str, data: np.ndarray, rows: int, cols: int, bias=None) -> QuantLinear:
    bits, codes, scales, mins = decode_blocks(data, type_name, rows, cols)
    as_tensor = None if mins is None else torch.from_numpy(mins)
    return QuantLinear(bits, torch.from_numpy(codes), torch.from_numpy(scales), as_tensor, 32, bias)


def test_hand_built_q4_k_blocks_are_what_ggufs_dequantiser_reads():
    weight = _weight()
    data = quantize_q4_k(weight)
    assert data.shape == (24, 2 * 144)
    back = quants.dequantize(data, GGMLQuantizationType.Q4_K)
    sub = weight.reshape(24, -1, 32)
    step = (sub.max(-1) - np.minimum(sub.min(-1), 0)) / 15  # the sub-block's ideal step
    # half a step, plus what the 6-bit scale/min grid adds (a few percent of a step)
    assert (np.abs(back - weight).reshape(24, -1, 32) <= step[..., None] * 0.75 + 1e-6).all()


@pytest.mark.parametrize("type_name", TYPES)
def test_decoded_weight_equals_ggufs_dequantised_weight(type_name):
    weight = _weight()
    data = requantize(weight, type_name)
    expected = quants.dequantize(data, GGMLQuantizationType[type_name])
    ours = _layer(type_name, data, 24, 512).dequantize().numpy()
    if type_name != "Q4_K":
        assert np.array_equal(ours, expected)  # bit for bit
        return
    # Q4_K: d * sc and dmin * m are rounded to float16, so each weight may move by the rounding
    # of its scale (times its code, at most 15) and of its minimum, and by no more.
    d = data.reshape(24, -1, 144)[..., 0:4].copy().view(np.float16).astype(np.float32)
    from llmserve.backends.torch.gguf_linear import q4_k_scale_min

    sc, m = q4_k_scale_min(data.reshape(24, -1, 144)[..., 4:16])
    scale, minimum = d[..., :1] * sc, d[..., 1:] * m  # [rows, super-blocks, 8] in float32
    bound = (15 * scale + minimum) * 2.0**-11 + 1e-7
    error = np.abs(ours - expected).reshape(24, -1, 8, 32)
    assert (error <= bound[..., None]).all()
    assert 0 < error.max() < 1e-3


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("rows", [1, 5, 70])  # a 4-row tile, tails, the dequantise path
def test_layer_equals_float_matmul_on_the_dequantised_weight(type_name, rows):
    torch.manual_seed(0)
    data = requantize(_weight(), type_name)
    bias = torch.randn(24)
    layer = _layer(type_name, data, 24, 512, bias)
    assert layer.bits == (8 if type_name in ("Q8_0", "Q5_0") else 4) and layer.group_size == 32
    layer.int8_activations = False  # the exact float path (the integer one: test_quantization.py)
    x = torch.randn(rows, 512)
    torch.testing.assert_close(layer(x), F.linear(x, layer.dequantize(), bias), atol=1e-4, rtol=1e-4)
    reference = torch.from_numpy(quants.dequantize(data, GGMLQuantizationType[type_name]))
    tol = 2e-2 if type_name == "Q4_K" else 1e-4  # Q4_K: its float16 scales over 512 inputs
    torch.testing.assert_close(layer(x), F.linear(x, reference, bias), atol=tol, rtol=tol)


@pytest.mark.parametrize("type_name", ["F32", "F16", "Q6_K", "Q5_1", "BF16"])
def test_other_types_stay_float(type_name):
    assert decode_blocks(np.zeros((2, 64), np.uint8), type_name, 2, 64) is None


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    """SmolLM2 re-quantised to Q8_0 (q/k/v), Q4_0 (o), Q4_1 (gate/up), Q4_K (down), with an F16
    part in layer 0's q/k/v, mixed widths in layer 1's gate/up and a Q5_0 o_proj in layer 2,
    converted like any GGUF."""
    root = tmp_path_factory.mktemp("gguf")
    source = write_mixed_gguf(packs.ensure_gguf("smollm2"), root / "mixed.gguf")
    return convert_gguf_to_hf(source, root / "mixed")


def _runner(model_dir, quant):
    runner = TorchModelRunner(str(model_dir), "float32", quantization=quant)
    runner.load()
    runner.allocate_kv_cache(8, 16)
    return runner


def _prompt_logits(runner, ids):
    item = BatchItem(
        0, ids, 0, list(range(len(ids) // 16 + 1)), True, None, (), (), want_prompt_logprobs=True
    )
    return runner.forward(Batch([item], 16))[1][0]


def test_mixed_gguf_serves_its_blocks_as_the_float_conversion_reads_them(mixed_dir):
    float_runner, gguf_runner = _runner(mixed_dir, None), _runner(mixed_dir, "gguf")
    floats = dict(float_runner.model.named_modules())
    layers = {name: m for name, m in gguf_runner.model.named_modules() if isinstance(m, QuantLinear)}
    head = layers.pop("lm_head")  # the file's Q8_0 token_embd blocks, tied: the same floats
    assert head.bits == 8 and torch.equal(head.dequantize(), float_runner.model.lm_head.weight.detach())
    expected_bits = {"qkv_proj": 8, "o_proj": 4, "gate_up_proj": 4, "down_proj": 4}
    assert len(layers) == 30 * 4 - len(KEPT_FLOAT) and not KEPT_FLOAT & set(layers)
    assert all(type(dict(gguf_runner.model.named_modules())[n]) is torch.nn.Linear for n in KEPT_FLOAT)
    for name, layer in layers.items():
        proj = name.rpartition(".")[2]
        assert layer.bits == (8 if name == "model.layers.2.self_attn.o_proj" else expected_bits[proj]), name
        ours, reference = layer.dequantize(), floats[name].weight.detach()
        if proj == "down_proj":  # Q4_K: float16 scales
            assert MIXED_TYPES["ffn_down"] == "Q4_K"
            # each weight within the float16 rounding of its sub-block's scale (x code) and min
            bound = (15 * layer.scales.float().abs() + layer.mins.float().abs()) * 2.0**-11 * 1.01
            error = (ours - reference).abs().view(*layer.scales.shape, 32)
            assert (error <= bound[..., None] + 1e-7).all(), name
        else:  # Q8_0 (un-permuted q/k rows), Q5_0, Q4_0, Q4_1: the same floats
            assert torch.equal(ours, reference), name
    ids = list(range(300, 380))
    a, b = _prompt_logits(float_runner, ids), _prompt_logits(gguf_runner, ids)
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert (a - b).abs().max() < 0.2  # Q4_K's float16 scales only


def test_refused_without_a_gguf_source(tmp_path, smollm2_dir):
    shutil.copy(smollm2_dir / "config.json", tmp_path / "config.json")  # a plain HF directory
    with pytest.raises(ConfigError, match="needs a model made from a GGUF"):
        TorchModelRunner(str(tmp_path), "float32", quantization="gguf").load()
    with pytest.raises(ConfigError, match="does not apply"):
        TorchModelRunner(str(smollm2_dir), "float32", quantization="gguf", group_size=64).load()


def test_flag_checks():
    assert Config(quantization="gguf").quantization == "gguf"
    with pytest.raises(ConfigError, match="not supported by backend 'cuda'"):
        check_config(Config(backend="cuda", quantization="gguf"))
    check_config(Config(backend="cpu", quantization="gguf"))
