"""The torch sampler: vLLM's sampling semantics, vectorised over the batch."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from llmserve.backends.base import BatchItem
from llmserve.backends.torch.sampler import Sampler
from llmserve.engine.constraints import LogitsProcessor, bitmask_words, set_allowed_tokens
from llmserve.engine.sampling import SamplingParams

EOS = 2


def item(
    seq_id: int = 0,
    prompt=(3,),
    output=(),
    sample: bool = True,
    seed_offset: int = 0,
    bitmask_row: int | None = None,
    **params,
) -> BatchItem:
    prompt, output = list(prompt), list(output)
    return BatchItem(
        seq_id=seq_id,
        token_ids=[(prompt + output)[-1]],
        start_pos=len(prompt) + len(output) - 1,
        block_table=[],
        sample=sample,
        params=SamplingParams(**params),
        prompt_token_ids=prompt,
        output_token_ids=output,
        seed_offset=seed_offset,
        bitmask_row=bitmask_row,
    )


def pack(vocab: int, *allowed: list[int]) -> np.ndarray:
    """A token bitmask with one row per list of allowed token ids."""
    bitmask = np.zeros((len(allowed), bitmask_words(vocab)), dtype=np.int32)
    for row, ids in enumerate(allowed):
        set_allowed_tokens(bitmask, row, ids)
    return bitmask


def tokens(sampler: Sampler, logits: torch.Tensor, items: list[BatchItem], bitmask=None) -> list[int]:
    return [r.token_id for r in sampler.sample(logits, items, bitmask)]


def row(*values: float) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.float32)


def frequencies(sampler: Sampler, logits_row: torch.Tensor, count: int, bitmask=None, **params) -> np.ndarray:
    """Sample ``count`` times in one batch (rows share nothing but the generator); with a
    one-row ``bitmask``, every row is constrained by it."""
    logits = logits_row.expand(count, -1).contiguous()
    if bitmask is not None:
        bitmask = np.repeat(bitmask, count, axis=0)
    rows = [(i if bitmask is not None else None) for i in range(count)]
    got = tokens(sampler, logits, [item(i, bitmask_row=rows[i], **params) for i in range(count)], bitmask)
    return np.bincount(got, minlength=logits.shape[1]) / count


# ----------------------------------------------------------------- greedy / shapes


def test_greedy_is_argmax_and_skips_items_that_do_not_sample():
    sampler = Sampler(8)
    logits = torch.tensor([[0, 1, 5, 2, 0, 0, 0, 0], [9, 1, 5, 2, 0, 0, 0, 0]], dtype=torch.float32)
    items = [item(10, temperature=0), item(11, sample=False), item(12, temperature=0)]
    results = sampler.sample(logits, items)
    assert [(r.seq_id, r.token_id) for r in results] == [(10, 2), (12, 0)]
    assert all(r.logprob is None and r.top_logprobs is None for r in results)


def test_logits_shape_must_match_sampling_items():
    sampler = Sampler(8)
    with pytest.raises(ValueError, match="logits must be"):
        sampler.sample(torch.zeros(2, 8), [item(temperature=0)])
    with pytest.raises(ValueError, match="logits must be"):
        sampler.sample(torch.zeros(1, 9), [item(temperature=0)])
    assert sampler.sample(torch.zeros(0, 8), [item(sample=False)]) == []


def test_caller_logits_are_not_modified():
    sampler = Sampler(8, eos_token_ids=[EOS])
    logits = torch.randn(3, 8)
    before = logits.clone()
    items = [
        item(0, output=[1, 1], temperature=0.7, top_k=3, top_p=0.9, min_p=0.1, repetition_penalty=1.5),
        item(1, output=[3], temperature=1.0, frequency_penalty=1, presence_penalty=1, logit_bias={4: 5}),
        item(2, temperature=1.0, allowed_token_ids=[1, 2], min_tokens=2, logprobs=2),
    ]
    sampler.sample(logits, items)
    assert torch.equal(logits, before)


def test_bf16_logits_are_accepted():
    sampler = Sampler(4)
    logits = torch.tensor([[0.0, 3.0, 1.0, 0.0]], dtype=torch.bfloat16)
    assert tokens(sampler, logits, [item(temperature=0, logprobs=1)]) == [1]


# ------------------------------------------------------------ biases and masks


def test_logit_bias_adds_to_logits():
    sampler = Sampler(4)
    logits = row(0.0, 3.0, 1.0, 0.0)
    assert tokens(sampler, logits, [item(temperature=0, logit_bias={2: 1.9})]) == [1]
    assert tokens(sampler, logits, [item(temperature=0, logit_bias={2: 2.1})]) == [2]
    # -100 bans a token even when sampling at high temperature.
    freq = frequencies(sampler, row(0.0, 3.0, 1.0, 0.0), 500, temperature=2.0, logit_bias={1: -100})
    assert freq[1] == 0 and freq[[0, 2, 3]].min() > 0


def test_allowed_token_ids_restrict_choices():
    sampler = Sampler(6)
    logits = row(9.0, 1.0, 2.0, 3.0, 0.0, 0.0)
    assert tokens(sampler, logits, [item(temperature=0, allowed_token_ids=[1, 2, 4])]) == [2]
    freq = frequencies(sampler, logits, 400, temperature=1.5, allowed_token_ids=[1, 4])
    assert set(np.flatnonzero(freq)) == {1, 4}


def test_token_bitmask_and_allowed_ids_combine():
    sampler = Sampler(6)
    logits = row(9.0, 1.0, 2.0, 3.0, 4.0, 0.0)
    mask = pack(6, [1, 2, 3, 5])
    assert tokens(sampler, logits, [item(temperature=0, bitmask_row=0)], mask) == [3]
    both = item(temperature=0, bitmask_row=0, allowed_token_ids=[1, 2, 4])
    assert tokens(sampler, logits, [both], mask) == [2]
    freq = frequencies(sampler, logits, 300, pack(6, [1, 5]), temperature=1.0)
    assert set(np.flatnonzero(freq)) == {1, 5}


def test_token_bitmask_bits_across_words_and_the_sign_bit():
    vocab = 70  # three words; bit 31 of a word is its sign bit
    sampler = Sampler(vocab)
    logits = torch.arange(vocab, dtype=torch.float32).flip(0).unsqueeze(0).repeat(4, 1)  # 0 is best
    allowed = [[31], [32, 63], [64, 69], [5, 31, 69]]
    mask = pack(vocab, *allowed)
    # Rows may point anywhere in the bitmask, not only in order.
    items = [item(i, temperature=0, bitmask_row=r) for i, r in enumerate([3, 1, 2, 0])]
    assert tokens(sampler, logits, items, mask) == [5, 32, 64, 31]
    for r, ids in enumerate(allowed):
        freq = frequencies(sampler, torch.zeros(1, vocab), 200, mask[r : r + 1], temperature=1.0)
        assert set(np.flatnonzero(freq)) == set(ids)


def test_masks_apply_per_row_in_a_batch():
    sampler = Sampler(4)
    logits = torch.tensor([[5.0, 1.0, 2.0, 0.0]] * 4)
    items = [
        item(0, temperature=0, bitmask_row=0),
        item(1, temperature=0),
        item(2, temperature=0, allowed_token_ids=[2]),
        item(3, temperature=0.5, top_k=2, bitmask_row=1),
    ]
    assert tokens(sampler, logits, items, pack(4, [1, 3], [3])) == [1, 0, 2, 3]
    # Without a bitmask in the batch, rows are not masked.
    assert tokens(sampler, logits[:2], [item(0, temperature=0), item(1, temperature=0)]) == [0, 0]


class BanToken(LogitsProcessor):
    """Bans ``token`` in rows whose request has ``seed`` == 1; records what it saw."""

    def __init__(self, token: int, fail: bool = False) -> None:
        self.token, self.fail, self.seen = token, fail, []

    def is_active(self, params: SamplingParams) -> bool:
        return params.seed == 1

    def apply(self, logits: torch.Tensor, rows) -> None:
        if self.fail:
            raise RuntimeError("processor bug")
        self.seen.append(
            [(r.index, r.seq_id, list(r.output_token_ids), logits[r.index].clone()) for r in rows]
        )
        for r in rows:
            logits[r.index, self.token] = float("-inf")


def test_logits_processor_edits_only_its_active_rows_after_the_bitmask():
    proc = BanToken(0)
    sampler = Sampler(4, logits_processors=[proc])
    logits = torch.tensor([[5.0, 1.0, 2.0, 0.0]] * 3)
    items = [
        item(7, temperature=0, seed=1, logprobs=1, output=[2]),
        item(8, temperature=0),
        item(9, temperature=0, seed=1, bitmask_row=0),
    ]
    results = sampler.sample(logits, items, pack(4, [0, 3]))
    assert [r.token_id for r in results] == [2, 0, 3]
    (seen,) = proc.seen
    assert [(i, seq, out) for i, seq, out, _ in seen] == [(0, 7, [2]), (2, 9, [])]
    assert torch.isinf(seen[1][3][[1, 2]]).all()  # it saw the bitmask applied
    assert results[0].logprob == pytest.approx(torch.log_softmax(logits[0], 0)[2].item())  # raw logprobs
    # Not active anywhere: never called.
    sampler.sample(logits[1:2], [item(8, temperature=0)])
    assert len(proc.seen) == 1


def test_a_failing_logits_processor_fails_only_its_rows():
    sampler = Sampler(4, logits_processors=[BanToken(0, fail=True)])
    logits = torch.tensor([[5.0, 1.0, 2.0, 0.0]] * 2)
    results = sampler.sample(logits, [item(0, temperature=0, seed=1), item(1, temperature=0)])
    assert "processor bug" in results[0].error and results[1].error is None
    assert results[1].token_id == 0


def test_out_of_vocabulary_ids_do_not_fail_the_step():
    sampler = Sampler(4, eos_token_ids=[EOS])
    p = SamplingParams(temperature=0)
    p.logit_bias = {99: 5.0, 1: 10.0}  # the engine validates; the sampler must still not crash
    p.allowed_token_ids = [1, 2, 1000]
    it = item(temperature=0)
    it.params = p
    assert tokens(sampler, row(5.0, 0.0, 0.0, 0.0), [it]) == [1]


def test_min_tokens_bans_eos_and_stop_tokens_until_reached():
    sampler = Sampler(6, eos_token_ids=[EOS])
    logits = torch.tensor([[0.0, 1.0, 9.0, 0.0, 8.0, 3.0]] * 3)
    items = [
        item(0, output=[1], temperature=0, min_tokens=3, stop_token_ids=[4]),
        item(1, output=[1, 1, 1], temperature=0, min_tokens=3, stop_token_ids=[4]),
        item(2, output=[1], temperature=0, min_tokens=0, stop_token_ids=[4]),
    ]
    assert tokens(sampler, logits, items) == [5, 2, 2]
    freq = frequencies(sampler, logits[:1], 300, temperature=1.0, min_tokens=1, stop_token_ids=[4])
    assert freq[EOS] == 0 and freq[4] == 0


# ------------------------------------------------------------------- penalties


def test_repetition_penalty_divides_positive_logits_once_per_token():
    sampler = Sampler(4)
    logits = row(3.0, 1.6, 0.0, 0.0)
    # Token 0 is in the prompt three times and the output once: 3.0 / p, not 3.0 / p**4.
    seen = dict(prompt=[0, 0, 0], output=[0], temperature=0)
    assert tokens(sampler, logits, [item(**seen, repetition_penalty=2.0)]) == [1]  # 1.5 < 1.6
    assert tokens(sampler, logits, [item(**seen, repetition_penalty=1.8)]) == [0]  # 1.67 > 1.6
    assert tokens(sampler, logits, [item(**seen, repetition_penalty=1.0)]) == [0]


def test_repetition_penalty_multiplies_negative_logits():
    sampler = Sampler(4)
    logits = row(-1.0, -1.5, -5.0, -5.0)
    assert tokens(sampler, logits, [item(output=[0], temperature=0, repetition_penalty=1.4)]) == [0]
    assert tokens(sampler, logits, [item(output=[0], temperature=0, repetition_penalty=1.6)]) == [1]
    # A penalty below 1 encourages repetition.
    logits = row(1.0, 1.5, 0.0, 0.0)
    assert tokens(sampler, logits, [item(prompt=[0], temperature=0, repetition_penalty=0.5)]) == [0]


def test_repetition_penalty_follows_each_steps_prompt_and_output():
    sampler = Sampler(4)
    logits = row(3.0, 1.6, 0.0, 0.0)
    penalised = dict(temperature=0, repetition_penalty=2.0)
    first = item(7, prompt=[0, 3], **penalised)
    assert tokens(sampler, logits, [first]) == [1]
    # Same sequence id, another prompt (a new request): token 0 is no longer seen.
    assert tokens(sampler, logits, [item(7, prompt=[3], **penalised)]) == [0]
    # The same sequence over steps: its growing output counts, its prompt still does.
    second = item(7, prompt=[2, 3], **penalised)
    assert tokens(sampler, logits, [second]) == [0]
    second.output_token_ids.append(0)
    assert tokens(sampler, logits, [second]) == [1]


def test_frequency_penalty_counts_output_occurrences_only():
    sampler = Sampler(4)
    logits = row(3.0, 1.6, 0.0, 0.0)
    # Three occurrences: 3.0 - 3 * 0.45 = 1.65 > 1.6; 3.0 - 3 * 0.5 = 1.5 < 1.6.
    assert tokens(sampler, logits, [item(output=[0, 0, 0], temperature=0, frequency_penalty=0.45)]) == [0]
    assert tokens(sampler, logits, [item(output=[0, 0, 0], temperature=0, frequency_penalty=0.5)]) == [1]
    # Prompt occurrences do not count.
    assert tokens(sampler, logits, [item(prompt=[0] * 9, temperature=0, frequency_penalty=2)]) == [0]


def test_presence_penalty_applies_once_per_distinct_output_token():
    sampler = Sampler(4)
    logits = row(3.0, 1.6, 0.0, 0.0)
    out = [0, 0, 0, 0]
    assert tokens(sampler, logits, [item(output=out, temperature=0, presence_penalty=1.3)]) == [0]
    assert tokens(sampler, logits, [item(output=out, temperature=0, presence_penalty=1.5)]) == [1]
    assert tokens(sampler, logits, [item(prompt=[0], temperature=0, presence_penalty=2)]) == [0]


def test_batched_penalties_match_each_row_alone():
    vocab = 50
    sampler = Sampler(vocab, eos_token_ids=[EOS])
    rng = random.Random(1)
    items = []
    for i in range(24):
        items.append(
            item(
                i,
                prompt=[rng.randrange(vocab) for _ in range(rng.randint(1, 30))],
                output=[rng.randrange(vocab) for _ in range(rng.randint(0, 20))],
                temperature=0,
                repetition_penalty=rng.choice([1.0, 0.7, 1.3, 2.0]),
                frequency_penalty=rng.choice([0.0, 0.4, -0.5]),
                presence_penalty=rng.choice([0.0, 1.0, -1.0]),
                logit_bias=rng.choice([{}, {rng.randrange(vocab): 2.0}]),
                min_tokens=rng.choice([0, 5]),
                max_tokens=50,
            )
        )
    logits = torch.randn(len(items), vocab, generator=torch.Generator().manual_seed(0)) * 2
    together = tokens(sampler, logits, items)
    alone = [tokens(sampler, logits[i : i + 1], [it])[0] for i, it in enumerate(items)]
    assert together == alone
    # The penalties did something: plain argmax differs somewhere.
    assert together != logits.argmax(dim=1).tolist()


# ---------------------------------------------------------------- random sampling


def test_temperature_sampling_follows_the_softmax():
    sampler = Sampler(5, default_seed=123)
    logits = row(2.0, 1.0, 0.5, 0.0, -1.0)
    for temperature in (1.0, 0.5, 2.0):
        freq = frequencies(sampler, logits, 20000, temperature=temperature)
        expected = torch.softmax(logits[0] / temperature, dim=0).numpy()
        # 20000 draws: standard error <= 0.0036; 5 sigma.
        np.testing.assert_allclose(freq, expected, atol=0.018)


def test_top_k_keeps_the_k_most_likely():
    sampler = Sampler(6)
    logits = row(0.0, 3.0, 1.0, 2.0, -1.0, 0.5)
    freq = frequencies(sampler, logits, 3000, temperature=1.0, top_k=2)
    assert set(np.flatnonzero(freq)) == {1, 3}
    np.testing.assert_allclose(freq[1], 1 / (1 + math.exp(-1)), atol=0.04)


def test_top_k_keeps_ties_with_the_kth_logit():
    sampler = Sampler(5)
    freq = frequencies(sampler, row(1.0, 1.0, 1.0, 0.0, 2.0), 2000, temperature=1.0, top_k=2)
    assert set(np.flatnonzero(freq)) == {0, 1, 2, 4}
    # More ties than the first candidate width (128) holds.
    logits = torch.zeros(1, 600)
    logits[0, :200] = 1.0
    drawn = set(np.flatnonzero(frequencies(Sampler(600), logits, 3000, temperature=1.0, top_k=5)))
    assert drawn <= set(range(200)) and len(drawn) > 190


def test_top_k_over_a_wide_vocabulary():
    vocab = 2000
    sampler = Sampler(vocab)
    logits = torch.linspace(0.0, 2.0, vocab).flip(0).unsqueeze(0)  # token 0 most likely
    for top_k in (300, 1500):  # past the first and the second candidate widths
        drawn = np.flatnonzero(frequencies(sampler, logits, 1500, temperature=1.0, top_k=top_k))
        assert 0.95 * top_k < drawn.max() < top_k


def test_top_p_applies_to_what_top_k_kept():
    sampler = Sampler(4)
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]]))
    # top_k=2 keeps tokens 1 and 3, renormalised to 0.625 / 0.375: top_p 0.6 then keeps token 1
    # only (over the whole vocabulary, 0.5 < 0.6 would have kept token 3 too).
    freq = frequencies(sampler, logits, 500, temperature=1.0, top_k=2, top_p=0.6)
    assert set(np.flatnonzero(freq)) == {1}
    freq = frequencies(sampler, logits, 4000, temperature=1.0, top_k=2, top_p=0.7)
    np.testing.assert_allclose(freq[[1, 3]], [0.625, 0.375], atol=0.04)


def test_top_p_keeps_the_smallest_nucleus():
    sampler = Sampler(4)
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]]))
    # Mass before token 3 is 0.5, before token 0 is 0.8, before token 2 is 0.95.
    for top_p, nucleus in ((0.4, {1}), (0.79, {1, 3}), (0.81, {0, 1, 3}), (0.96, {0, 1, 2, 3})):
        freq = frequencies(sampler, logits, 2000, temperature=1.0, top_p=top_p)
        assert set(np.flatnonzero(freq)) == nucleus, top_p
    # Renormalised over the nucleus.
    freq = frequencies(sampler, logits, 4000, temperature=1.0, top_p=0.79)
    np.testing.assert_allclose(freq[[1, 3]], [0.625, 0.375], atol=0.04)


def test_top_p_over_a_wide_nucleus():
    # A flat distribution: the nucleus is larger than the 1024 first candidates.
    vocab = 2000
    sampler = Sampler(vocab)
    logits = torch.linspace(0.0, 1.0, vocab).flip(0).unsqueeze(0)  # token 0 most likely
    probs = torch.softmax(logits[0], dim=0).double()
    before = torch.cumsum(probs, 0) - probs
    for top_p in (0.3, 0.7):
        size = int((before < top_p).sum())
        assert size > 1024 if top_p == 0.7 else size < 1024
        freq = frequencies(sampler, logits, 1500, temperature=1.0, top_p=top_p)
        drawn = np.flatnonzero(freq)
        assert drawn.max() < size  # nothing outside the nucleus
        assert drawn.max() > 0.95 * size  # and it was not cut short


def test_min_p_drops_tokens_below_a_fraction_of_the_top():
    sampler = Sampler(4)
    logits = torch.log(torch.tensor([[0.5, 0.26, 0.24, 0.0001]]))
    freq = frequencies(sampler, logits, 3000, temperature=1.0, min_p=0.5)
    assert set(np.flatnonzero(freq)) == {0, 1}
    # min_p applies after temperature: at temperature 0.5, 0.26 becomes < half of the top.
    freq = frequencies(sampler, logits, 1000, temperature=0.5, min_p=0.5)
    assert set(np.flatnonzero(freq)) == {0}


def test_mixed_batch_keeps_greedy_rows_greedy():
    sampler = Sampler(16)
    logits = torch.randn(40, 16, generator=torch.Generator().manual_seed(3))
    items = [item(i, temperature=0 if i % 2 else 1.5) for i in range(40)]
    got = tokens(sampler, logits, items)
    argmax = logits.argmax(dim=1).tolist()
    assert [got[i] for i in range(1, 40, 2)] == [argmax[i] for i in range(1, 40, 2)]
    assert [got[i] for i in range(0, 40, 2)] != [argmax[i] for i in range(0, 40, 2)]


# ----------------------------------------------------------------------- seeds


class ToyModel:
    """Logits that depend on the last token, so a sampled sequence feeds back into the next step."""

    def __init__(self, vocab: int) -> None:
        self.table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(7)) * 1.5

    def logits(self, items: list[BatchItem]) -> torch.Tensor:
        return self.table[[(list(it.prompt_token_ids) + list(it.output_token_ids))[-1] for it in items]]


def run_steps(sampler: Sampler, model: ToyModel, items: list[BatchItem], steps: int) -> list[list[int]]:
    for _ in range(steps):
        for it, token in zip(items, tokens(sampler, model.logits(items), items), strict=True):
            it.output_token_ids.append(token)
    return [list(it.output_token_ids) for it in items]


def test_seeded_row_is_reproducible_alone_or_in_any_batch():
    vocab = 64
    model = ToyModel(vocab)
    params = dict(temperature=1.0, top_p=0.95, top_k=30, seed=42, seed_offset=1)
    alone = run_steps(Sampler(vocab), model, [item(0, **params)], 25)[0]

    rng = random.Random(5)
    others = [
        item(
            i,
            prompt=[rng.randrange(vocab)],
            temperature=rng.choice([0, 0.5, 1.0, 1.7]),
            top_p=rng.choice([1.0, 0.5, 0.9]),
            top_k=rng.choice([0, 3, 40]),
            min_p=rng.choice([0.0, 0.2]),
            presence_penalty=rng.choice([0.0, 1.0]),
            seed=rng.choice([None, None, i]),
        )
        for i in range(1, 12)
    ]
    batch = others[:5] + [item(0, **params)] + others[5:]
    together = run_steps(Sampler(vocab, default_seed=99), model, batch, 25)[5]
    assert together == alone
    # Other seeds, or another choice (seed_offset) of the same request, differ.
    assert run_steps(Sampler(vocab), model, [item(0, **{**params, "seed": 43})], 25)[0] != alone
    assert run_steps(Sampler(vocab), model, [item(0, **{**params, "seed_offset": 2})], 25)[0] != alone


def test_seed_noise_is_per_token_so_a_no_op_cut_keeps_the_tokens():
    # top_k = vocab keeps every token: the row races over candidates instead of the whole
    # vocabulary, and must still draw the same tokens.
    vocab = 64
    model = ToyModel(vocab)
    plain = run_steps(Sampler(vocab), model, [item(0, temperature=1.0, seed=3)], 20)[0]
    cut = run_steps(Sampler(vocab), model, [item(0, temperature=1.0, seed=3, top_k=vocab)], 20)[0]
    assert cut == plain


def test_unseeded_rows_follow_the_default_seed():
    vocab = 64
    model = ToyModel(vocab)

    def run(default_seed: int) -> list[list[int]]:
        return run_steps(Sampler(vocab, default_seed=default_seed), model, [item(i) for i in range(4)], 10)

    assert run(1) == run(1)
    assert run(1) != run(2)


# -------------------------------------------------------------------- logprobs


def test_logprobs_are_raw_model_logprobs_with_rank_and_top_k():
    sampler = Sampler(6)
    logits = torch.tensor([[1.0, 4.0, 2.0, 3.0, 0.0, -1.0], [0.0, 0.0, 5.0, 1.0, 0.0, 0.0]])
    raw = torch.log_softmax(logits, dim=1)
    items = [
        # Bias, temperature and penalties change the choice, not the reported logprobs.
        item(0, temperature=0, logit_bias={2: 10.0}, repetition_penalty=2.0, prompt=[1], logprobs=3),
        item(1, temperature=0.5, logprobs=0),
    ]
    first, second = sampler.sample(logits, items)
    assert first.token_id == 2
    assert first.logprob == pytest.approx(raw[0, 2].item(), abs=1e-6)
    assert first.rank == 3  # tokens 1 and 3 are more likely under the model
    assert [t.token_id for t in first.top_logprobs] == [1, 3, 2]
    assert [t.rank for t in first.top_logprobs] == [1, 2, 3]
    assert [t.logprob for t in first.top_logprobs] == pytest.approx(raw[0, [1, 3, 2]].tolist(), abs=1e-6)
    assert second.top_logprobs == []
    assert second.logprob == pytest.approx(raw[1, second.token_id].item(), abs=1e-6)
    assert second.rank >= 1


def test_logprobs_only_for_rows_that_ask():
    sampler = Sampler(5)
    logits = torch.randn(3, 5)
    results = sampler.sample(logits, [item(0), item(1, logprobs=2, temperature=0), item(2)])
    assert results[0].logprob is None and results[2].top_logprobs is None
    assert results[1].rank == 1 and len(results[1].top_logprobs) == 2
    assert results[1].top_logprobs[0].token_id == results[1].token_id


# -------------------------------------------------------------- prompt logprobs


def test_prompt_logprobs_target_the_next_prompt_token():
    sampler = Sampler(8)
    prompt = [3, 1, 4, 1, 5]
    chunk = BatchItem(
        seq_id=0,
        token_ids=prompt[2:],  # positions 2, 3, 4: targets are prompt[3], prompt[4], then past the end
        start_pos=2,
        block_table=[],
        sample=True,
        params=SamplingParams(prompt_logprobs=2),
        prompt_token_ids=prompt,
        output_token_ids=[],
        want_prompt_logprobs=True,
    )
    logits = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    raw = torch.log_softmax(logits, dim=1)
    out = sampler.prompt_logprobs(logits, chunk)
    assert [tok.token_id for tok, _ in out] == [1, 5]
    for j, (tok, top) in enumerate(out):
        assert tok.logprob == pytest.approx(raw[j, tok.token_id].item(), abs=1e-6)
        assert tok.rank == int((raw[j] > raw[j, tok.token_id]).sum()) + 1
        assert [t.token_id for t in top] == raw[j].topk(2).indices.tolist()
        assert [t.rank for t in top] == [1, 2]
    with pytest.raises(ValueError, match="logits must be"):
        sampler.prompt_logprobs(logits[:2], chunk)


def test_prompt_logprobs_of_a_long_chunk_and_zero_alternatives():
    vocab = 32
    sampler = Sampler(vocab)
    prompt = [random.Random(0).randrange(vocab) for _ in range(600)]
    chunk = BatchItem(0, prompt, 0, [], False, SamplingParams(prompt_logprobs=0), prompt, [])
    logits = torch.randn(600, vocab)
    out = sampler.prompt_logprobs(logits, chunk)
    assert [tok.token_id for tok, _ in out] == prompt[1:]
    assert all(top == [] for _, top in out)
    raw = torch.log_softmax(logits, dim=1)
    assert out[-1][0].logprob == pytest.approx(raw[598, prompt[599]].item(), abs=1e-6)
