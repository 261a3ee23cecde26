"""The JAX sampler: the torch sampler's semantics, on the device.

Deterministic parts (greedy after masks, bans, biases and penalties; logprobs; prompt
logprobs) must pick exactly what the torch sampler picks; random parts are checked by their
distributions and by seeded reproducibility.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from llmserve.backends.base import BatchItem
from llmserve.backends.torch.sampler import Sampler
from llmserve.engine.constraints import bitmask_words, set_allowed_tokens
from llmserve.engine.sampling import SamplingParams

jax = pytest.importorskip("jax")

from llmserve.backends.jax.sampler import JaxSampler  # noqa: E402

EOS = 2


def item(seq_id=0, prompt=(3,), output=(), seed_offset=0, bitmask_row=None, **params) -> BatchItem:
    prompt, output = list(prompt), list(output)
    return BatchItem(
        seq_id=seq_id,
        token_ids=[(prompt + output)[-1]],
        start_pos=len(prompt) + len(output) - 1,
        block_table=[],
        sample=True,
        params=SamplingParams(**params),
        prompt_token_ids=prompt,
        output_token_ids=output,
        seed_offset=seed_offset,
        bitmask_row=bitmask_row,
    )


def sample(sampler: JaxSampler, logits: np.ndarray, items: list[BatchItem], pad: int = 0, bitmask=None):
    """Sample with ``pad`` extra (ignored) logits rows in front, as a bucketed step has."""
    logits = np.asarray(logits, np.float32)
    padded = np.concatenate([np.random.default_rng(0).normal(size=(pad, logits.shape[1])), logits])
    rows = list(range(pad, pad + len(items)))
    return sampler.sample(jax.numpy.asarray(padded, jax.numpy.float32), rows, items, bitmask)


def tokens(sampler: JaxSampler, logits: np.ndarray, items: list[BatchItem]) -> list[int]:
    return [r.token_id for r in sample(sampler, logits, items)]


def frequencies(sampler: JaxSampler, logits_row, count: int, **params) -> np.ndarray:
    logits = np.tile(np.asarray(logits_row, np.float32), (count, 1))
    got = tokens(sampler, logits, [item(i, **params) for i in range(count)])
    return np.bincount(got, minlength=logits.shape[1]) / count


# ------------------------------------------------------- deterministic: same as torch


ADJUSTED = [
    dict(temperature=0),
    dict(temperature=0, logit_bias={5: 3.0, 7: -100.0}),
    dict(temperature=0, allowed_token_ids=[1, 4, 9, 30]),
    dict(temperature=0, allowed_token_ids=[2, 3, 4, 5], bitmask="odd"),
    dict(temperature=0, bitmask="odd", logit_bias={6: 9.0, 7: 1.0}),
    dict(temperature=0, min_tokens=4, stop_token_ids=[11], output=(6, 6), boost=(EOS, 11)),
    dict(temperature=0, repetition_penalty=1.8, prompt=(1, 2, 3, 4, 5, 6, 7, 8), output=(9, 10)),
    dict(temperature=0, repetition_penalty=0.5, prompt=(20, 21, 22)),
    dict(
        temperature=0, frequency_penalty=1.5, presence_penalty=0.7, output=(4, 4, 4, 8, 12, 12), boost=(4, 12)
    ),
    dict(temperature=0, presence_penalty=-2.0, output=(30, 31)),
]


@pytest.mark.parametrize("case", range(len(ADJUSTED)))
def test_greedy_after_adjustments_matches_torch(case):
    vocab = 40
    params = dict(ADJUSTED[case])
    prompt, output = params.pop("prompt", (3,)), params.pop("output", ())
    bitmask = None
    if params.pop("bitmask", None) == "odd":
        bitmask = np.zeros((12, bitmask_words(vocab)), np.int32)
        for r in range(12):
            set_allowed_tokens(bitmask, r, range(1, vocab, 2))
    logits = torch.randn(12, vocab, generator=torch.Generator().manual_seed(case))
    for row, column in enumerate(params.pop("boost", ())):
        logits[row::2, column] += 2.5
    # Bitmask rows in reverse order: rows are picked by bitmask_row, not by position.
    rows = [11 - i if bitmask is not None else None for i in range(12)]
    items = [item(i, prompt, output, bitmask_row=rows[i], **params) for i in range(12)]
    want = [r.token_id for r in Sampler(vocab, eos_token_ids=(EOS,)).sample(logits, items, bitmask)]
    got = [
        r.token_id for r in sample(JaxSampler(vocab, eos_token_ids=(EOS,)), logits.numpy(), items, 2, bitmask)
    ]
    assert got == want
    # The adjustments change the choice somewhere, or the case tests nothing.
    if case:
        assert want != logits.argmax(dim=1).tolist()


def test_logprobs_match_torch_with_rank_and_top_k():
    vocab = 50
    logits = torch.randn(6, vocab, generator=torch.Generator().manual_seed(1))
    items = [
        item(0, temperature=0, logprobs=3, logit_bias={9: 30.0}),  # biased choice, raw logprobs
        item(1, temperature=0, logprobs=0),
        item(2, temperature=0),  # does not ask
        item(3, temperature=0, logprobs=20),
        item(4, temperature=0, logprobs=5, repetition_penalty=2.0, prompt=tuple(range(50))),
        item(5, temperature=0, logprobs=1),
    ]
    want = Sampler(vocab).sample(logits, items)
    got = sample(JaxSampler(vocab), logits.numpy(), items, pad=3)
    for w, g in zip(want, got, strict=True):
        assert g.token_id == w.token_id
        if w.logprob is None:
            assert g.logprob is None and g.top_logprobs is None
            continue
        assert g.logprob == pytest.approx(w.logprob, abs=1e-5)
        assert g.rank == w.rank
        assert [t.token_id for t in g.top_logprobs] == [t.token_id for t in w.top_logprobs]
        assert [t.rank for t in g.top_logprobs] == [t.rank for t in w.top_logprobs]
        assert [t.logprob for t in g.top_logprobs] == pytest.approx(
            [t.logprob for t in w.top_logprobs], abs=1e-5
        )
    assert got[0].token_id == 9 and got[0].rank > 1


def test_prompt_logprobs_match_torch():
    vocab = 64
    prompt = [random.Random(0).randrange(vocab) for _ in range(300)]
    chunk = BatchItem(0, prompt[10:290], 10, [], False, SamplingParams(prompt_logprobs=4), prompt, [])
    logits = torch.randn(280, vocab, generator=torch.Generator().manual_seed(2))
    want = Sampler(vocab).prompt_logprobs(logits, chunk)
    hidden = jax.numpy.asarray(np.concatenate([np.zeros((5, vocab)), logits.numpy()]), jax.numpy.float32)
    rows = np.arange(5, 285, dtype=np.int32)
    got = JaxSampler(vocab).prompt_logprobs(lambda r: hidden[r], rows, chunk)
    assert len(got) == len(want) == 280
    for (gt, galts), (wt, walts) in zip(got, want, strict=True):
        assert (gt.token_id, gt.rank) == (wt.token_id, wt.rank)
        assert gt.logprob == pytest.approx(wt.logprob, abs=1e-5)
        assert [t.token_id for t in galts] == [t.token_id for t in walts]


# ------------------------------------------------------------------ random sampling


def test_temperature_sampling_follows_the_softmax():
    sampler = JaxSampler(5, default_seed=123)
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0])
    for temperature in (1.0, 0.5, 2.0):
        freq = frequencies(sampler, logits, 20000, temperature=temperature)
        expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
        np.testing.assert_allclose(freq, expected, atol=0.018)  # 5 standard errors


def test_top_k_keeps_the_k_most_likely_and_ties():
    sampler = JaxSampler(6)
    freq = frequencies(sampler, [0.0, 3.0, 1.0, 2.0, -1.0, 0.5], 3000, temperature=1.0, top_k=2)
    assert set(np.flatnonzero(freq)) == {1, 3}
    np.testing.assert_allclose(freq[1], 1 / (1 + math.exp(-1)), atol=0.04)
    freq = frequencies(JaxSampler(5), [1.0, 1.0, 1.0, 0.0, 2.0], 2000, temperature=1.0, top_k=2)
    assert set(np.flatnonzero(freq)) == {0, 1, 2, 4}


def test_top_p_keeps_the_smallest_nucleus_after_top_k():
    sampler = JaxSampler(4)
    logits = np.log([0.15, 0.5, 0.05, 0.3])
    for top_p, nucleus in ((0.4, {1}), (0.79, {1, 3}), (0.81, {0, 1, 3}), (0.96, {0, 1, 2, 3})):
        assert (
            set(np.flatnonzero(frequencies(sampler, logits, 2000, temperature=1.0, top_p=top_p))) == nucleus
        )
    freq = frequencies(sampler, logits, 4000, temperature=1.0, top_p=0.79)
    np.testing.assert_allclose(freq[[1, 3]], [0.625, 0.375], atol=0.04)
    # top_k=2 renormalises to 0.625 / 0.375 first: top_p 0.6 then keeps token 1 only.
    assert set(np.flatnonzero(frequencies(sampler, logits, 500, temperature=1.0, top_k=2, top_p=0.6))) == {1}


def test_min_p_drops_tokens_below_a_fraction_of_the_top():
    sampler = JaxSampler(4)
    logits = np.log([0.5, 0.26, 0.24, 0.0001])
    assert set(np.flatnonzero(frequencies(sampler, logits, 3000, temperature=1.0, min_p=0.5))) == {0, 1}
    assert set(np.flatnonzero(frequencies(sampler, logits, 1000, temperature=0.5, min_p=0.5))) == {0}


def test_mixed_batch_keeps_greedy_rows_greedy():
    logits = np.random.default_rng(3).normal(size=(40, 16)).astype(np.float32)
    got = tokens(
        JaxSampler(16), logits, [item(i, temperature=0 if i % 2 else 1.5, top_p=0.9) for i in range(40)]
    )
    argmax = logits.argmax(axis=1).tolist()
    assert got[1::2] == argmax[1::2]
    assert got[0::2] != argmax[0::2]


# ------------------------------------------------------------------------- seeds


class ToyModel:
    """Logits that depend on the last token, so a sampled sequence feeds back into the next step."""

    def __init__(self, vocab: int) -> None:
        self.table = np.random.default_rng(7).normal(size=(vocab, vocab)).astype(np.float32) * 1.5

    def logits(self, items: list[BatchItem]) -> np.ndarray:
        return self.table[[(list(it.prompt_token_ids) + list(it.output_token_ids))[-1] for it in items]]


def run_steps(sampler: JaxSampler, model: ToyModel, items: list[BatchItem], steps: int) -> list[list[int]]:
    for _ in range(steps):
        for it, token in zip(items, tokens(sampler, model.logits(items), items), strict=True):
            it.output_token_ids.append(token)
    return [list(it.output_token_ids) for it in items]


def test_seeded_row_is_reproducible_alone_or_in_any_batch():
    vocab = 64
    model = ToyModel(vocab)
    params = dict(temperature=1.0, top_p=0.95, top_k=30, seed=42, seed_offset=1)
    alone = run_steps(JaxSampler(vocab), model, [item(0, **params)], 20)[0]
    rng = random.Random(5)
    others = [
        item(
            i,
            prompt=[rng.randrange(vocab)],
            temperature=rng.choice([0, 0.5, 1.0, 1.7]),
            top_p=rng.choice([1.0, 0.5]),
            min_p=rng.choice([0.0, 0.2]),
            presence_penalty=rng.choice([0.0, 1.0]),
            seed=rng.choice([None, i]),
        )
        for i in range(1, 8)
    ]
    batch = others[:3] + [item(0, **params)] + others[3:]
    assert run_steps(JaxSampler(vocab, default_seed=99), model, batch, 20)[3] == alone
    assert run_steps(JaxSampler(vocab), model, [item(0, **{**params, "seed": 43})], 20)[0] != alone
    assert run_steps(JaxSampler(vocab), model, [item(0, **{**params, "seed_offset": 2})], 20)[0] != alone
    big = {**params, "seed": 2**64 - 5}  # the whole accepted seed range works
    assert len(run_steps(JaxSampler(vocab), model, [item(0, **big)], 3)[0]) == 3


def test_seed_is_the_documented_jax_key():
    vocab, seed = 32, 1234
    logits = np.zeros((1, vocab), np.float32)  # a flat row: the race picks argmax(-log E)
    got = tokens(
        JaxSampler(vocab), logits, [item(0, output=(5, 6), seed=seed, seed_offset=3, temperature=1.0)]
    )
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 3), 2)
    u = jax.random.uniform(key, (vocab,), jax.numpy.float32)
    assert got == [int(np.argmax(-np.log(-np.log(np.asarray(u)))))]


def test_unseeded_rows_follow_the_default_seed():
    vocab = 64
    model = ToyModel(vocab)

    def run(default_seed: int) -> list[list[int]]:
        return run_steps(JaxSampler(vocab, default_seed=default_seed), model, [item(i) for i in range(4)], 8)

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_sampler_compiles_once_per_rows_mode_and_logprobs():
    sampler = JaxSampler(16)
    logits = np.random.default_rng(0).normal(size=(4, 16))
    for _ in range(3):
        tokens(sampler, logits, [item(i, temperature=0) for i in range(4)])
        tokens(sampler, logits, [item(i, temperature=0.7, top_k=3) for i in range(4)])
    assert sorted(sampler.compiled) == [(4, "greedy", False), (4, "truncate", False)]
