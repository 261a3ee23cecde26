"""Our torch models vs transformers, logit for logit: full prefill, chunked prefill over paged KV,
decode steps, mixed batches with shuffled block tables; BERT embeddings; registry errors."""

from __future__ import annotations

import json
import random

import pytest
import torch
import transformers
from transformers import AutoModel, AutoModelForCausalLM

from llmserve.arch.hf_config import load_arch_config
from llmserve.arch.registry import UnsupportedModelError
from llmserve.backends.base import Batch, BatchItem
from llmserve.backends.torch.runner import TorchModelRunner
from llmserve.engine.sampling import SamplingParams

BLOCK = 4
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=256,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,  # small, so the scaling changes short prompts
}
TINY_CONFIGS = {
    "llama": ("LlamaConfig", {}),
    "llama3-rope": ("LlamaConfig", {"rope_scaling": LLAMA3_ROPE, "rope_theta": 50000.0}),
    "llama-tied": ("LlamaConfig", {"tie_word_embeddings": True, "num_key_value_heads": 4}),
    "mistral-window": ("MistralConfig", {"sliding_window": 8}),
    "qwen2": ("Qwen2Config", {"num_key_value_heads": 1}),
    "qwen3": ("Qwen3Config", {"head_dim": 32}),
}


def make_tiny(kind: str, path) -> torch.nn.Module:
    """A randomly initialised transformers model saved to ``path``; biases and norm weights are
    perturbed too, so a missing bias or norm shows in the logits."""
    class_name, extra = TINY_CONFIGS[kind]
    config = getattr(transformers, class_name)(**{**TINY, **extra})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(path)
    return model


def reference_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


class PagedSequence:
    """A sequence as the engine would feed it: a shuffled block table and a growing length."""

    def __init__(self, seq_id: int, tokens: list[int], blocks: list[int]) -> None:
        self.seq_id, self.tokens, self.blocks, self.cached = seq_id, tokens, blocks, 0

    def item(self, n: int, *, prompt_logprobs: bool = True) -> BatchItem:
        new = self.tokens[self.cached : self.cached + n]
        item = BatchItem(
            seq_id=self.seq_id,
            token_ids=new,
            start_pos=self.cached,
            block_table=self.blocks,
            sample=True,
            params=SamplingParams(),
            prompt_token_ids=self.tokens,
            output_token_ids=[],
            want_prompt_logprobs=prompt_logprobs,
        )
        self.cached += n
        return item


def close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    scale = ref.abs().max().item()
    torch.testing.assert_close(ours, ref, atol=1e-4 * max(scale, 1.0), rtol=1e-4)


def sequences(num_blocks: int, lengths: list[int], vocab: int, seed: int = 0) -> list[PagedSequence]:
    rng = random.Random(seed)
    free = list(range(num_blocks))
    rng.shuffle(free)  # non-contiguous, unordered block tables
    seqs = []
    for seq_id, length in enumerate(lengths):
        need = (length + BLOCK - 1) // BLOCK
        blocks, free = free[:need], free[need:]
        seqs.append(PagedSequence(seq_id, [rng.randrange(vocab) for _ in range(length)], blocks))
    return seqs


def run_schedule(runner: TorchModelRunner, seqs: list[PagedSequence], steps: list[list[tuple[int, int]]]):
    """Run steps of (sequence index, new tokens); yield (sequence, item, logits, prompt logits)."""
    for step in steps:
        items = [seqs[i].item(n) for i, n in step]
        logits, prompt = runner.forward(Batch(items, block_size=BLOCK))
        for k, (i, _) in enumerate(step):
            yield seqs[i], items[k], logits[k], prompt[k]


def check_against(model, runner, seqs, steps) -> None:
    refs = [reference_logits(model, s.tokens) for s in seqs]
    for seq, item, last, prompt in run_schedule(runner, seqs, steps):
        ref = refs[seq.seq_id][item.start_pos : item.end_pos]
        close(prompt, ref)
        close(last, ref[-1])


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def tiny(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    model = make_tiny(request.param, path)
    runner = TorchModelRunner(str(path), "float32")
    runner.load()
    return model, runner


def test_full_prefill_of_two_sequences(tiny):
    model, runner = tiny
    runner.allocate_kv_cache(32, BLOCK)
    seqs = sequences(32, [13, 6], 512)
    check_against(model, runner, seqs, [[(0, 13), (1, 6)]])


def test_chunked_prefill_over_paged_kv(tiny):
    model, runner = tiny
    runner.allocate_kv_cache(32, BLOCK)
    seqs = sequences(32, [19, 10], 512, seed=1)
    check_against(model, runner, seqs, [[(0, 7)], [(0, 5), (1, 3)], [(1, 7), (0, 7)]])


@pytest.mark.parametrize("use_kernels", [True, False], ids=["cpu-kernels", "torch-ops"])
def test_decode_steps_mixed_with_prefill(tiny, use_kernels):
    model, runner = tiny
    runner = TorchModelRunner(runner.model_dir, "float32", use_kernels=use_kernels)
    runner.load()
    runner.allocate_kv_cache(40, BLOCK)
    seqs = sequences(40, [20, 14, 9], 512, seed=2)
    steps = [[(0, 15), (1, 9)]]
    steps += [[(1, 1), (0, 1)] for _ in range(3)]  # decodes of different lengths
    steps += [[(0, 1), (2, 5), (1, 1)], [(2, 4), (1, 1), (0, 1)]]  # decodes + prefill in one batch
    check_against(model, runner, seqs, steps)


def test_only_sampling_rows_get_logits(tiny):
    model, runner = tiny
    runner.allocate_kv_cache(16, BLOCK)
    seq = sequences(16, [9], 512, seed=3)[0]
    first = seq.item(5, prompt_logprobs=False)
    first.sample = False
    logits, prompt = runner.forward(Batch([first], block_size=BLOCK))
    assert logits.shape == (0, 512) and prompt == {}
    logits, prompt = runner.forward(Batch([seq.item(4, prompt_logprobs=False)], block_size=BLOCK))
    assert logits.shape == (1, 512) and logits.dtype == torch.float32 and prompt == {}
    close(logits[0], reference_logits(model, seq.tokens)[-1])


def test_smollm2_matches_transformers(smollm2_dir):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    runner = TorchModelRunner(str(smollm2_dir), "float32")
    info = runner.load()
    assert (info.num_layers, info.num_kv_heads, info.head_dim, info.dtype) == (30, 3, 64, "float32")
    assert 2 in info.eos_token_ids
    runner.allocate_kv_cache(24, BLOCK)
    seqs = sequences(24, [21, 13], info.vocab_size, seed=4)
    check_against(model, runner, seqs, [[(0, 9), (1, 12)], [(1, 1), (0, 12)]])


def test_qwen2_5_coder_gguf_matches_transformers():
    """Our first real Qwen2 checkpoint (converted from a Q4_K_M GGUF): the same logits as
    transformers on the same converted weights."""
    from llmserve.sources import packs

    qwen_dir = packs.ensure_model("qwen2.5-coder-0.5b")
    model = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32).eval()
    runner = TorchModelRunner(str(qwen_dir), "float32")
    info = runner.load()
    assert (info.num_layers, info.num_kv_heads, info.head_dim, info.architecture) == (
        24,
        2,
        64,
        "Qwen2ForCausalLM",
    )
    runner.allocate_kv_cache(24, BLOCK)
    seqs = sequences(24, [17, 12], info.vocab_size, seed=5)
    check_against(model, runner, seqs, [[(0, 9), (1, 11)], [(1, 1), (0, 8)]])


def test_auto_dtype_runs_bf16_on_cpu(smollm2_dir):
    runner = TorchModelRunner(str(smollm2_dir), "auto")
    info = runner.load()
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("CPU without native bf16")
    assert info.dtype == "bfloat16"
    runner.allocate_kv_cache(8, 16)
    seq = PagedSequence(0, [1, 504, 3458, 314, 260, 1345, 28, 2051], [3, 5])
    logits, _ = runner.forward(Batch([seq.item(8, prompt_logprobs=False)], block_size=16))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_minilm_embeddings_match_transformers(minilm_dir):
    from transformers import AutoTokenizer

    from llmserve.backends.torch.embedder import TorchEmbedder

    texts = ["A man is eating food.", "Paged attention keeps the KV cache in fixed-size blocks.", "hi"]
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(minilm_dir).eval()(**encoded).last_hidden_state
    mask = encoded["attention_mask"][..., None].float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    embedder = TorchEmbedder(str(minilm_dir))
    assert embedder.dim == 384 and embedder.max_model_len == 512
    ids = [tokenizer(t)["input_ids"] for t in texts]
    ours = torch.tensor(embedder.embed(ids))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(3), atol=1e-5)
    raw = torch.tensor(embedder.embed(ids[:1], normalize=False))
    assert raw.norm() > 1.5  # unnormalised mean pooling
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), ref[:1], atol=1e-5, rtol=1e-4)


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    config = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 64}
    config |= {"num_attention_heads": 4, "num_hidden_layers": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    runner = TorchModelRunner(str(tmp_path), "float32")
    with pytest.raises(UnsupportedModelError) as info:
        runner.load()
    message = str(info.value)
    assert "GPTNeoXForCausalLM" in message
    for supported in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        assert supported in message
    assert info.value.status == 400


def test_config_parsing_reads_both_rope_layouts(tmp_path):
    base = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64}
    base |= {"num_attention_heads": 4, "num_hidden_layers": 2, "eos_token_id": 7}
    old = {**base, "rope_theta": 5e5, "rope_scaling": {"type": "llama3", "factor": 8.0}}
    new = {**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}
    for raw in (old, new):
        (tmp_path / "config.json").write_text(json.dumps(raw))
        (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
        cfg = load_arch_config(tmp_path)
        assert cfg.rope_theta == 5e5
        assert cfg.rope_scaling == {"rope_type": "llama3", "factor": 8.0}
        assert cfg.eos_token_ids == (7, 9)
        assert (cfg.num_kv_heads, cfg.head_dim) == (4, 16)
