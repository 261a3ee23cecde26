"""The engine end to end on the real SmolLM2: offline API, batching, caching, preemption, aborts."""

from __future__ import annotations

import asyncio

import pytest
import torch

from llmserve import LLM, SamplingParams

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "List three colours:",
]


@pytest.fixture(scope="module")
def llm(smollm2_dir):
    return LLM(str(smollm2_dir), backend="cpu", dtype="float32", max_model_len=1024)


@pytest.fixture(scope="module")
def reference(smollm2_dir):
    """transformers greedy continuations (16 tokens) of PROMPTS, one prompt at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = tok(prompt, return_tensors="pt").input_ids
            gen = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.eos_token_id)
            out.append(gen[0, ids.shape[1] :].tolist())
    return out


def greedy(n: int = 16, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


def test_greedy_matches_transformers_in_one_batch(llm, reference):
    outputs = llm.generate(PROMPTS, greedy())
    assert [o.outputs[0].token_ids for o in outputs] == reference
    text = llm.tokenizer.decode(reference[0])
    assert outputs[0].outputs[0].text == text
    assert all(o.outputs[0].finish_reason == "length" for o in outputs)


def test_chunked_prefill_and_preemption_keep_outputs(smollm2_dir, reference):
    # 16-token step budget forces chunked prefill; a ~10-block pool forces preemption.
    small = LLM(
        str(smollm2_dir), backend="cpu", dtype="float32", max_model_len=128, max_num_batched_tokens=16,
        kv_cache_space=10 * 16 * 46080 / 2**30, enable_prefix_caching=False,
    )  # fmt: skip
    outputs = small.generate(PROMPTS, greedy())
    assert [o.outputs[0].token_ids for o in outputs] == reference
    stats = small.engine.engine.stats()
    assert stats.num_free_blocks == stats.num_total_blocks


def test_seeded_sampling_is_reproducible_whatever_the_batch(llm):
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=1234, ignore_eos=True)
    alone = llm.generate([PROMPTS[2]], params)[0].outputs[0].token_ids
    noisy = [SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True) for _ in PROMPTS]
    batch = llm.generate(PROMPTS + [PROMPTS[2]], noisy + [params])
    assert batch[-1].outputs[0].token_ids == alone
    other = llm.generate(
        [PROMPTS[2]], SamplingParams(max_tokens=12, temperature=1.0, seed=99, ignore_eos=True)
    )
    assert other[0].outputs[0].token_ids != alone


def test_n_choices_share_the_prompt(llm):
    prompt = "Write a short poem about the sea. " * 6
    out = llm.generate([prompt], SamplingParams(n=3, max_tokens=8, temperature=1.0, seed=7, ignore_eos=True))[
        0
    ]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1  # independent samples
    assert all(len(c.token_ids) == 8 for c in out.outputs)


def test_stop_strings_tokens_and_lengths(llm, reference):
    full = llm.tokenizer.decode(reference[0])
    stop = full.strip().split()[1]  # a word in the middle of the greedy continuation
    out = llm.generate([PROMPTS[0]], greedy(stop=[stop]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert stop not in out.text and full.startswith(out.text)
    kept = llm.generate([PROMPTS[0]], greedy(stop=[stop], include_stop_str_in_output=True))[0].outputs[0]
    assert kept.text.endswith(stop)
    token = reference[0][3]
    out = llm.generate([PROMPTS[0]], greedy(stop_token_ids=[token]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == token and out.token_ids[-1] == token
    eos = llm.generate(["<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"],
                       SamplingParams(max_tokens=200, temperature=0.0))[0].outputs[0]  # fmt: skip
    assert eos.finish_reason == "stop" and eos.token_ids[-1] in llm.engine.model_info.eos_token_ids
    forced = llm.generate(["<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"],
                          SamplingParams(max_tokens=len(eos.token_ids) + 5, min_tokens=len(eos.token_ids) + 5,
                                         temperature=0.0))[0].outputs[0]  # fmt: skip
    assert len(forced.token_ids) == len(eos.token_ids) + 5


def test_prefix_cache_hit(llm):
    prefix = "You are a helpful assistant that answers in one word. " * 8
    first = llm.generate([prefix + "Question: sky colour?"], greedy(4))[0]
    second = llm.generate([prefix + "Question: grass colour?"], greedy(4))[0]
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens >= 64
    assert llm.engine.engine.blocks.prefix_cache_hits >= 64


def test_logprobs(llm, reference):
    out = llm.generate([PROMPTS[0]], greedy(4, logprobs=3, prompt_logprobs=2))[0]
    choice = out.outputs[0]
    assert len(choice.logprobs) == 4
    for token, (chosen, top) in zip(choice.token_ids, choice.logprobs, strict=True):
        assert chosen.token_id == token and chosen.rank == 1
        assert len(top) == 3 and top[0].token_id == token
        assert abs(top[0].logprob - chosen.logprob) < 1e-5 and chosen.logprob <= 0
    prompt_len = len(out.prompt_token_ids)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == prompt_len


def test_abort_frees_blocks(llm):
    engine = llm.engine

    async def run():
        await engine.start()
        try:
            streams = [engine.add_request(f"abort-{i}", [1, 2, 3, 4] * 20, greedy(200)) for i in range(6)]
            for stream in streams:
                async for _ in stream:
                    break  # one output, then the client goes away
                await stream.aclose()
            for _ in range(100):
                stats = engine.engine.stats()
                if stats.num_running == 0 and stats.num_free_blocks == stats.num_total_blocks:
                    return stats
                await asyncio.sleep(0.05)
            return engine.engine.stats()
        finally:
            await engine.stop()

    stats = asyncio.run(run())
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert stats.num_free_blocks == stats.num_total_blocks


def test_invalid_requests_are_rejected_before_the_engine(llm):
    from llmserve.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="maximum context length is 1024"):
        llm.engine.add_request("too-long", [1] * 1000, SamplingParams(max_tokens=100))
    with pytest.raises(InvalidRequestError, match="out of vocabulary"):
        llm.engine.add_request("bad-token", [10**7], SamplingParams())
    assert not llm.engine.engine.has_work()
    with pytest.raises(InvalidRequestError, match="top_p"):
        SamplingParams(top_p=0)
