"""Token constraints and logits processors on the real SmolLM2 (torch CPU backend, float32)."""

from __future__ import annotations

import pytest

from llmserve.backends.torch.backend import CpuBackend
from llmserve.config import build_config
from llmserve.engine.constraints import Constraint, ConstraintSpec, LogitsProcessor, set_allowed_tokens
from llmserve.engine.engine import LLMEngine
from llmserve.engine.sampling import SamplingParams
from llmserve.errors import ConfigError

PROMPTS = ["The capital of France is", "def fibonacci(n):", "List three colours:", "Once upon a time,"]
BYTES_PER_TOKEN = 30 * 3 * 64 * 2 * 4  # SmolLM2-135M K+V in float32


class TokenSet(ConstraintSpec):
    """Only ``allowed`` tokens; complete after ``length`` tokens (never, by default)."""

    def __init__(self, allowed: list[int], length: int | None = None) -> None:
        self.allowed, self.length = sorted(allowed), length
        self.made: list[TokenSetConstraint] = []

    def new(self) -> Constraint:
        self.made.append(TokenSetConstraint(self))
        return self.made[-1]


class TokenSetConstraint(Constraint):
    def __init__(self, spec: TokenSet) -> None:
        self.spec, self.accepted = spec, []

    def fill_bitmask(self, bitmask, row: int) -> None:
        set_allowed_tokens(bitmask, row, self.spec.allowed)

    def accept(self, token_id: int) -> bool:
        self.accepted.append(token_id)
        return token_id in self.spec.allowed

    def is_terminated(self) -> bool:
        return self.spec.length is not None and len(self.accepted) >= self.spec.length


def make_engine(model_dir, num_blocks: int = 64, **kw) -> LLMEngine:
    config = build_config(
        model=str(model_dir), backend="cpu", dtype="float32", max_model_len=128, max_num_batched_tokens=16,
        kv_cache_space=num_blocks * 16 * BYTES_PER_TOKEN / 2**30, enable_prefix_caching=False,
    )  # fmt: skip
    return LLMEngine(CpuBackend(config), str(model_dir), config, **kw)


def run(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> tuple[dict, int, dict]:
    """Run requests together: ({(request id, choice): tokens}, preemptions seen, finish events)."""
    for rid, (prompt, params) in requests.items():
        engine.add_request(rid, prompt, params)
    out: dict[tuple[str, int], list[int]] = {}
    finished, preemptions = {}, 0
    while engine.has_work():
        for event in engine.step():
            if event.token_id is not None:
                out.setdefault((event.request_id, event.index), []).append(event.token_id)
            if event.finish_reason is not None:
                finished[(event.request_id, event.index)] = event
        for req in engine.scheduler.requests.values():
            preemptions = max(preemptions, *(s.num_preemptions for s in req.seqs))
    stats = engine.stats()
    assert stats.num_free_blocks == stats.num_total_blocks
    return out, preemptions, finished


@pytest.fixture(scope="module")
def tight(smollm2_dir):
    """10 blocks of 16 tokens for 5 sequences of ~50 tokens: preemption is certain."""
    return make_engine(smollm2_dir, num_blocks=10)


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok(p).input_ids for p in PROMPTS]


def test_constrained_tokens_stay_in_the_set_through_preemption_with_n2(tight, tok, prompts):
    digits = sorted({tok.convert_tokens_to_ids(t) for t in "0123456789"} | {tok(" 1").input_ids[0]})
    choices, greedy = TokenSet(digits), TokenSet(digits)
    plain = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    requests = {
        "n2": (prompts[0], SamplingParams(n=2, max_tokens=40, temperature=1.0, seed=3, constraint=choices)),
        "greedy": (prompts[1], SamplingParams(max_tokens=40, temperature=0.0, constraint=greedy)),
        "plain0": (prompts[2], plain),
        "plain1": (prompts[3], plain),
    }
    out, preemptions, finished = run(tight, requests)
    assert preemptions > 0, "the pool was meant to force preemption"
    for key in [("n2", 0), ("n2", 1), ("greedy", 0)]:
        assert len(out[key]) == 40 and set(out[key]) <= set(digits), key
        assert finished[key].finish_reason == "length" and finished[key].error is None
    # Each choice had its own constraint, told each token once, also across preemptions.
    assert [c.accepted for c in choices.made] == [out[("n2", 0)], out[("n2", 1)]]
    assert greedy.made[0].accepted == out[("greedy", 0)]
    assert out[("n2", 0)] != out[("n2", 1)]
    # The unconstrained requests do not notice the constrained ones; the bitmask masks exactly
    # like allowed_token_ids does.
    alone, _, _ = run(tight, {"plain0": (prompts[2], plain), "plain1": (prompts[3], plain)})
    assert alone == {k: v for k, v in out.items() if k[0].startswith("plain")}
    masked = SamplingParams(max_tokens=40, temperature=0.0, allowed_token_ids=digits)
    same, _, _ = run(tight, {"greedy": (prompts[1], masked)})
    assert same[("greedy", 0)] == out[("greedy", 0)]


def test_a_complete_constraint_stops_and_a_rejected_token_fails_only_its_request(tight, tok, prompts):
    words = [tok(" Paris").input_ids[0], tok(" London").input_ids[0], tok(".").input_ids[0]]
    done = TokenSet(words, length=3)

    class Rejecting(TokenSet):
        def new(self) -> Constraint:
            constraint = super().new()
            constraint.accept = lambda token_id: False
            return constraint

    plain = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    out, _, finished = run(
        tight,
        {
            "done": (prompts[0], SamplingParams(max_tokens=20, temperature=0.0, constraint=done)),
            "bad": (prompts[1], SamplingParams(max_tokens=20, temperature=0.0, constraint=Rejecting(words))),
            "plain": (prompts[2], plain),
        },
    )
    assert finished[("done", 0)].finish_reason == "stop" and len(out[("done", 0)]) == 3
    assert out[("done", 0)][0] == words[0]  # " Paris", the model's own greedy choice
    assert finished[("bad", 0)].finish_reason == "abort" and ("bad", 0) not in out
    assert "rejected token" in finished[("bad", 0)].error
    assert finished[("plain", 0)].finish_reason == "length" and len(out[("plain", 0)]) == 8


class BanFirstChoice(LogitsProcessor):
    """For requests with seed 5: bans the given tokens (a stand-in for a real processor)."""

    def __init__(self, banned: list[int]) -> None:
        self.banned = banned
        self.calls = 0

    def is_active(self, params: SamplingParams) -> bool:
        return params.seed == 5

    def apply(self, logits, rows) -> None:
        self.calls += 1
        for row in rows:
            logits[row.index, self.banned] = float("-inf")


def test_logits_processor_changes_only_the_rows_it_is_active_for(smollm2_dir, tight, prompts):
    greedy = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    ref, _, _ = run(tight, {"a": (prompts[0], greedy)})
    banned = sorted(set(ref[("a", 0)]))
    proc = BanFirstChoice(banned)
    engine = make_engine(smollm2_dir, logits_processors=[proc])
    seeded = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True, seed=5)
    out, _, _ = run(engine, {"a": (prompts[0], greedy), "b": (prompts[0], seeded)})
    assert out[("a", 0)] == ref[("a", 0)]  # seed is ignored by greedy: only the processor differs
    assert not set(out[("b", 0)]) & set(banned) and proc.calls == 10
    with pytest.raises(ConfigError, match="LogitsProcessor"):
        make_engine(smollm2_dir, logits_processors=[object()])
