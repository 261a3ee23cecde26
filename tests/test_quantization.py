"""--quantization int8 / int4: the quantised linear against float matmuls, the flag's checks, and
a real server answering greedily close to the float model (also under --quantization gguf, which
serves the pack's own Q4_1 blocks; its decoding is tested in test_quantization_gguf.py)."""

from __future__ import annotations

import openai
import pytest
import torch
import torch.nn.functional as F
from conftest import ServerProcess
from torch import nn

from llmserve.backends.base import Batch, BatchItem
from llmserve.backends.torch.quant_head import QuantEmbedding, quantize_head
from llmserve.backends.torch.quant_linear import QuantLinear, pack_int4, quantize_int8, quantize_linears
from llmserve.config import Config
from llmserve.errors import ConfigError
from llmserve.server.startup import check_config

CASES = [(8, 0), (4, 32), (4, 64)]  # (bits, group size; int8 has one scale per output channel)


@pytest.mark.parametrize("bits,group", CASES)
@pytest.mark.parametrize("rows", [1, 3, 5, 70])  # full 4-row tiles, tails, the dequantise path
@pytest.mark.parametrize("bias", [False, True])
def test_kernel_equals_float_matmul_on_the_dequantised_weight(bits, group, rows, bias):
    torch.manual_seed(0)
    linear = nn.Linear(128, 77, bias=bias)  # 77 outputs: an odd weight-row tile at the end
    quant = QuantLinear.from_linear(linear, bits, group)
    quant.int8_activations = False  # float activations: exact up to float rounding
    x = torch.randn(rows, 128)
    expected = F.linear(x, quant.dequantize(), linear.bias)
    torch.testing.assert_close(quant(x), expected, atol=1e-4, rtol=1e-4)


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """x as the integer kernels see it: int8 codes times a scale (max |x| / 127) per 32 inputs."""
    blocks = x.view(x.shape[0], -1, 32)
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    codes = torch.round(blocks / torch.where(scale > 0, scale, torch.ones_like(scale)))
    return (codes * scale).view_as(x)


@pytest.mark.parametrize("bits,group", CASES + [(8, 32)])
@pytest.mark.parametrize("rows", [1, 2, 3])  # rows below _INT8_ROWS take the integer kernels
@pytest.mark.parametrize("bias", [False, True])
def test_integer_kernels_equal_the_quantised_activation_reference(bits, group, rows, bias):
    torch.manual_seed(3)
    linear = nn.Linear(128, 77, bias=bias)
    if bits == 8 and group == 32:  # Q8_0's layout: a scale per 32 weights
        codes, scales = quantize_int8(linear.weight.detach(), 32)
        quant = QuantLinear(8, codes, scales, None, 32, linear.bias)
    else:
        quant = QuantLinear.from_linear(linear, bits, group)
    assert quant.int8_activations
    x = torch.randn(rows, 128) * torch.linspace(0.1, 4, 128)  # blocks of different ranges
    b = None if linear.bias is None else linear.bias.double()
    expected = F.linear(quantize_activations(x).double(), quant.dequantize().double(), b).float()
    torch.testing.assert_close(quant(x), expected, atol=2e-4, rtol=1e-4)
    # and within int8 rounding of the float-activation result
    exact = F.linear(x, quant.dequantize(), linear.bias)
    assert ((quant(x) - exact).norm() / exact.norm()).item() < 0.02


@pytest.mark.parametrize("bits,group,bound", [(8, 0, 0.01), (4, 32, 0.12), (4, 64, 0.15)])
def test_close_to_the_float_layer(bits, group, bound):
    torch.manual_seed(1)
    linear = nn.Linear(256, 96)
    quant = QuantLinear.from_linear(linear, bits, group)
    x = torch.randn(9, 256)
    expected = linear(x)
    error = (quant(x) - expected).norm() / expected.norm()
    assert error < bound
    # Each weight is within half a quantisation step (plus the float16 rounding of scale and min).
    step = (linear.weight.abs().amax(1, keepdim=True) / 127) if bits == 8 else None
    if step is not None:
        assert ((quant.dequantize() - linear.weight).abs() <= step * 0.51).all()


def test_bf16_activations_are_accepted():
    torch.manual_seed(2)
    linear = nn.Linear(64, 32)
    quant = QuantLinear.from_linear(linear, 4, 32)
    x = torch.randn(2, 64)
    out = quant(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), quant(x), atol=0.05, rtol=0.02)


def test_int4_block_order_is_ggufs():
    codes = torch.arange(32, dtype=torch.uint8).remainder(16).view(1, 32)  # 0..15, 0..15
    packed = pack_int4(codes)
    assert packed.shape == (1, 16)
    assert packed[0, 3].item() == 3 | (3 << 4)  # byte b: weight b low, weight b + 16 high


def test_group_size_must_divide_the_inputs():
    with pytest.raises(ConfigError, match="does not divide"):
        QuantLinear.from_linear(nn.Linear(96, 8), 4, 64)


def test_projections_are_quantised_and_the_head_is_left_to_quantize_head():
    model = nn.Module()
    model.proj, model.lm_head = nn.Linear(64, 64), nn.Linear(64, 100)
    assert quantize_linears(model, "int8", 32) == 1
    assert isinstance(model.proj, QuantLinear) and type(model.lm_head) is nn.Linear


@pytest.mark.parametrize("bits", [8, 4])
def test_tied_head_and_embedding_share_int8_codes(bits):
    torch.manual_seed(4)
    model = nn.Module()
    model.model = nn.Module()
    model.model.embed_tokens = nn.Embedding(100, 64)
    model.lm_head = nn.Linear(64, 100, bias=False)
    model.lm_head.weight = model.model.embed_tokens.weight  # tied
    float_weight = model.lm_head.weight.detach().clone()
    given = QuantLinear.from_linear(model.lm_head, 4, 32) if bits == 4 else None
    head = quantize_head(model, given)
    assert model.lm_head is head and head.bits == bits
    assert isinstance(model.model.embed_tokens, QuantEmbedding)
    ids = torch.tensor([[3, 99], [0, 42]])
    rows = model.model.embed_tokens(ids)
    assert rows.shape == (2, 2, 64)
    torch.testing.assert_close(rows.view(4, 64), head.dequantize()[ids.view(-1)], atol=0, rtol=0)
    if bits == 8:  # within half a step of each 32-weight group's scale
        step = float_weight.view(100, 2, 32).abs().amax(-1, keepdim=True) / 127
        assert (
            (head.dequantize().view(100, 2, 32) - float_weight.view(100, 2, 32)).abs() <= step * 0.51
        ).all()


def test_flag_checks():
    with pytest.raises(ValueError, match="multiple of 32"):
        Config(quantization="int4", quantization_group_size=48)
    with pytest.raises(ValueError, match="quantization"):
        Config(quantization="fp8")
    with pytest.raises(ConfigError, match="not supported by backend 'cuda'"):
        check_config(Config(backend="cuda", quantization="int4"))
    with pytest.raises(ConfigError, match="tensor-parallel"):
        check_config(Config(backend="cpu", quantization="int8", tensor_parallel_size=2))


def test_runner_refuses_a_group_size_that_does_not_divide(smollm2_dir):
    from llmserve.backends.torch.runner import TorchModelRunner

    runner = TorchModelRunner(str(smollm2_dir), "float32", quantization="int4", group_size=128)
    with pytest.raises(ConfigError, match="576"):  # SmolLM2's hidden size
        runner.load()


def _float_logprobs(smollm2_dir, ids: list[int]) -> torch.Tensor:
    """The float32 model's next-token log-probabilities after each prefix of ``ids``."""
    from llmserve.backends.torch.runner import TorchModelRunner

    runner = TorchModelRunner(str(smollm2_dir), "float32")
    runner.load()
    runner.allocate_kv_cache(len(ids) // 16 + 2, 16)
    item = BatchItem(
        0, ids, 0, list(range(len(ids) // 16 + 1)), True, None, (), (), want_prompt_logprobs=True
    )
    _, prompt = runner.forward(Batch([item], 16))
    return prompt[0].float()


NEAR_TIE = 0.5  # nats


@pytest.fixture(scope="module", params=["int8", "int4", "gguf"])
def quant_server(request):
    server = ServerProcess(
        "smollm2", "--embedding-model", "none", "--max-model-len", "512", "--dtype", "float32",
        "--quantization", request.param,
    )  # fmt: skip
    yield request.param, server
    server.stop()


def test_greedy_chat_through_the_server_stays_with_the_float_model(quant_server, smollm2_dir, tok):
    """Asserted, after the same prefix at every one of 12 greedy tokens: the token is in the
    float model's top 5, and within NEAR_TIE nats of the float model's own greedy choice.
    Quantisation drift swaps near-ties only (this prompt's first token, 'L' against 'The', is one:
    llama-server on the same Q4_1 file answers 'L' too), while a wrong scale, nibble order or tile
    bound gives tokens far outside the top 5."""
    method, server = quant_server
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=messages,
        max_tokens=12,
        temperature=0,
        extra_body={"return_token_ids": True, "ignore_eos": True},
    )
    prompt = reply.model_extra["prompt_token_ids"]
    out = reply.choices[0].model_extra["token_ids"]
    assert len(prompt) == reply.usage.prompt_tokens and len(out) == reply.usage.completion_tokens == 12
    logprobs = _float_logprobs(smollm2_dir, prompt + out)[len(prompt) - 1 : -1]
    top5 = logprobs.topk(5, -1).indices.tolist()
    outside = [i for i, (token, top) in enumerate(zip(out, top5, strict=True)) if token not in top]
    assert not outside, f"{method}: tokens {outside} of {tok.decode(out)!r} are outside the float top 5"
    gaps = [float(row.max() - row[token]) for row, token in zip(logprobs, out, strict=True)]
    far = [i for i, gap in enumerate(gaps) if gap > NEAR_TIE]
    assert not far, f"{method}: tokens {far} of {tok.decode(out)!r} are {gaps} nats below the float choice"
