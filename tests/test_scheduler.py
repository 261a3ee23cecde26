"""Scheduler + block manager driven by a fake runner that checks the KV cache on every step."""

from __future__ import annotations

import numpy as np
import pytest
from fake_backend import FakeBackend, check_accounting, drive, prompt_logprob
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmserve.engine.constraints import Constraint, ConstraintSpec, bitmask_words, set_allowed_tokens
from llmserve.engine.kv_cache import BlockManager
from llmserve.engine.request import Request, SequenceStatus
from llmserve.engine.sampling import SamplingParams
from llmserve.engine.scheduler import Scheduler, SchedulerConfig
from llmserve.errors import ConfigError, InvalidRequestError


def make(
    num_blocks: int = 64,
    block_size: int = 4,
    budget: int = 256,
    max_seqs: int = 16,
    max_len: int = 256,
    caching: bool = True,
    eos: tuple[int, ...] = (),
    sample_fn=None,
    vocab: int = 1000,
    policy: str = "fcfs",
    constraints: bool = False,
) -> tuple[Scheduler, FakeBackend]:
    config = SchedulerConfig(
        max_seqs, budget, max_len, block_size, vocab if constraints else None, scheduling_policy=policy
    )
    sched = Scheduler(config, BlockManager(num_blocks, block_size, caching), eos)
    backend = FakeBackend(num_blocks, block_size, vocab)
    if sample_fn is not None:
        backend.sample_fn = sample_fn
    return sched, backend


def req(rid: str, prompt: list[int], priority: int = 0, arrival: float | None = None, **params) -> Request:
    params.setdefault("max_tokens", 8)
    params.setdefault("ignore_eos", True)
    return Request.create(rid, prompt, SamplingParams(temperature=0, **params), arrival, priority)


def step(sched: Scheduler, backend: FakeBackend):
    out = sched.schedule()
    changed = sched.update(out, backend.execute(sched.make_batch(out)) if out.chunks else [])
    check_accounting(sched)
    return out, changed


def outputs(requests: list[Request]) -> dict[str, list[tuple[list[int], str | None]]]:
    return {r.request_id: [(s.output_token_ids, s.finish_reason) for s in r.seqs] for r in requests}


def prompt(seed: int, length: int) -> list[int]:
    return [(seed * 31 + i * 7) % 997 for i in range(length)]


# -- admission, validation --------------------------------------------------------------------


def test_single_request_runs_to_max_tokens_and_frees_everything() -> None:
    sched, backend = make()
    r = req("a", prompt(1, 10), max_tokens=5)
    sched.add_request(r)
    assert sched.has_unfinished() and sched.num_waiting == 1
    drive(sched, backend)
    seq = r.seqs[0]
    assert len(seq.output_token_ids) == 5 and seq.finish_reason == "length"
    assert seq.status is SequenceStatus.FINISHED_LENGTH
    assert not sched.has_unfinished() and sched.num_running == 0
    assert sched.blocks.num_free_blocks == 64 and sched.blocks.usage == 0.0
    # One prefill step, then 4 decode steps of one token each.
    assert [[(i.start_pos, i.num_tokens, i.sample) for i in s] for s in backend.steps] == [
        [(0, 10, True)],
        *[[(10 + k, 1, True)] for k in range(4)],
    ]


def test_requests_that_can_never_run_are_rejected() -> None:
    sched, _ = make(num_blocks=4, block_size=4, max_len=32)
    with pytest.raises(InvalidRequestError, match="maximum context length"):
        sched.add_request(req("long", prompt(1, 33)))
    with pytest.raises(InvalidRequestError, match="KV cache blocks"):
        sched.add_request(req("big", prompt(1, 17)))  # 5 blocks > 4
    sched.add_request(req("ok", prompt(1, 16)))
    with pytest.raises(InvalidRequestError, match="already in use"):
        sched.add_request(req("ok", prompt(1, 3)))
    assert sched.num_waiting == 1
    with pytest.raises(InvalidRequestError):
        Request.create("empty", [], SamplingParams())


def test_max_num_seqs_limits_admission_fcfs() -> None:
    sched, backend = make(max_seqs=2)
    reqs = [req(f"r{i}", prompt(i, 5), max_tokens=3) for i in range(4)]
    for r in reqs:
        sched.add_request(r)
    out, _ = step(sched, backend)
    assert [c.seq.request_id for c in out.chunks] == ["r0", "r1"]
    assert sched.num_running == 2 and sched.num_waiting == 2
    drive(sched, backend)
    # r2 and r3 start together once r0 and r1 have finished (3 tokens: 3 steps)
    started = [
        next(k for k, st in enumerate(backend.steps) if r.seqs[0].seq_id in {i.seq_id for i in st})
        for r in reqs
    ]
    assert started == [0, 0, 3, 3]
    assert all(len(st) <= 2 for st in backend.steps)


# -- prefix caching ---------------------------------------------------------------------------


def test_prefix_hit_on_shared_prompt() -> None:
    sched, backend = make(block_size=16)
    system = prompt(7, 32)
    a = req("a", system + [1, 2, 3, 4, 5, 6, 7, 8], max_tokens=2)
    sched.add_request(a)
    step(sched, backend)
    a_blocks = list(a.seqs[0].block_table)
    drive(sched, backend)
    before = backend.num_computed_tokens
    b = req("b", system + [9, 9, 9], max_tokens=2)
    sched.add_request(b)
    out, _ = step(sched, backend)
    seq = b.seqs[0]
    assert seq.num_cached_tokens == 32
    assert seq.block_table[:2] == a_blocks[:2]
    assert out.chunks[0].start_pos == 32 and out.chunks[0].num_new_tokens == 3
    assert backend.num_computed_tokens - before == 3
    assert sched.blocks.prefix_cache_queries == 40 + 35
    assert sched.blocks.prefix_cache_hits == 32
    drive(sched, backend)
    assert sched.blocks.num_free_blocks == 64


def test_identical_prompt_recomputes_the_last_block() -> None:
    sched, backend = make(block_size=16)
    p = prompt(3, 32)
    sched.add_request(req("a", p, max_tokens=1))
    drive(sched, backend)
    b = req("b", p, max_tokens=1)
    sched.add_request(b)
    out, _ = step(sched, backend)
    # Only one of the two blocks may be reused: the last prompt token must produce logits.
    assert b.seqs[0].num_cached_tokens == 16 and out.chunks[0].num_new_tokens == 16


def test_prefix_shared_between_running_requests() -> None:
    sched, backend = make(block_size=4)
    p = prompt(5, 12)
    a, b = req("a", p + [1], max_tokens=6), req("b", p + [2], max_tokens=6)
    sched.add_request(a)
    step(sched, backend)
    sched.add_request(b)
    step(sched, backend)
    sa, sb = a.seqs[0], b.seqs[0]
    assert sb.block_table[:3] == sa.block_table[:3]
    assert all(sched.blocks.ref_count(blk) == 2 for blk in sa.block_table[:3])
    drive(sched, backend)
    assert sa.output_token_ids != sb.output_token_ids  # different contexts, checked KV each step


def test_prefix_caching_disabled_recomputes() -> None:
    sched, backend = make(caching=False)
    p = prompt(2, 20)
    sched.add_request(req("a", p, max_tokens=1))
    drive(sched, backend)
    b = req("b", p, max_tokens=1)
    sched.add_request(b)
    out, _ = step(sched, backend)
    assert out.chunks[0].num_new_tokens == 20 and b.seqs[0].num_cached_tokens == 0
    assert sched.blocks.prefix_cache_queries == 0


# -- chunked prefill and mixing ---------------------------------------------------------------


def test_chunked_prefill_under_small_budget() -> None:
    sched, backend = make(budget=8)
    r = req("a", prompt(1, 30), max_tokens=3)
    sched.add_request(r)
    drive(sched, backend)
    assert [[(i.start_pos, i.num_tokens, i.sample) for i in s] for s in backend.steps] == [
        [(0, 8, False)],
        [(8, 8, False)],
        [(16, 8, False)],
        [(24, 6, True)],
        [(30, 1, True)],
        [(31, 1, True)],
    ]
    # Same tokens as an unchunked run.
    ref_sched, ref_backend = make()
    ref = req("a", prompt(1, 30), max_tokens=3)
    ref_sched.add_request(ref)
    drive(ref_sched, ref_backend)
    assert r.seqs[0].output_token_ids == ref.seqs[0].output_token_ids


def test_decodes_first_then_prefill_chunk_in_one_step() -> None:
    sched, backend = make(budget=10)
    a = req("a", prompt(1, 4), max_tokens=20)
    b = req("b", prompt(2, 3), max_tokens=20)
    sched.add_request(a)
    sched.add_request(b)
    step(sched, backend)  # both prompts in one step
    c = req("c", prompt(3, 25), max_tokens=2)
    sched.add_request(c)
    out, _ = step(sched, backend)
    assert [(ch.seq.request_id, ch.num_new_tokens, ch.sample) for ch in out.chunks] == [
        ("a", 1, True),
        ("b", 1, True),
        ("c", 8, False),
    ]
    out, _ = step(sched, backend)
    assert [(ch.seq.request_id, ch.start_pos, ch.num_new_tokens) for ch in out.chunks] == [
        ("a", 5, 1),
        ("b", 4, 1),
        ("c", 8, 8),
    ]
    drive(sched, backend)


# -- preemption -------------------------------------------------------------------------------


def reference(
    requests: list[Request], block_size: int = 4, eos: tuple[int, ...] = (), vocab: int = 1000
) -> dict:
    """Outputs of the same requests with a huge pool and budget (no chunking, no preemption)."""
    sched, backend = make(10_000, block_size, 100_000, 1000, 10_000, eos=eos, vocab=vocab)
    copies = [req(r.request_id, r.prompt_token_ids, **_params(r.params)) for r in requests]
    for r in copies:
        sched.add_request(r)
    drive(sched, backend, check=False)
    return outputs(copies)


def _params(p: SamplingParams) -> dict:
    return dict(n=p.n, max_tokens=p.max_tokens, min_tokens=p.min_tokens, ignore_eos=p.ignore_eos,
                stop_token_ids=list(p.stop_token_ids), prompt_logprobs=p.prompt_logprobs)  # fmt: skip


def test_preemption_when_blocks_run_out_and_resume_gives_same_tokens() -> None:
    sched, backend = make(num_blocks=8, block_size=4, max_seqs=3)
    reqs = [req(f"r{i}", prompt(i, 6), max_tokens=12) for i in range(4)]  # 18 tokens = 5 blocks each
    for r in reqs:
        sched.add_request(r)
    preempted = []
    while sched.has_unfinished():
        was_running = set(sched.running)
        out, _ = step(sched, backend)
        preempted += out.preempted
        if out.preempted:
            # Back to the front of the queue (ahead of r3), oldest first, blocks freed ...
            assert list(sched.waiting)[: len(out.preempted)] == out.preempted[::-1]
            assert all(s.block_table == [] and s.num_computed_tokens == 0 for s in out.preempted)
            assert all(s.output_token_ids for s in out.preempted)  # ... keeping their tokens
            # and nobody is admitted in a step that had to preempt.
            assert {c.seq for c in out.chunks} <= was_running
    assert preempted, "the pool is too small for all of them: someone must be preempted"
    # The most recently admitted goes first: r0, the oldest, is never preempted.
    assert reqs[0].seqs[0] not in preempted
    assert all(s.num_preemptions > 0 for s in preempted)
    assert outputs(reqs) == reference(reqs)
    assert sched.blocks.num_free_blocks == 8


def test_preempted_sequence_resumes_from_prefix_cache() -> None:
    sched, backend = make(num_blocks=6, block_size=4)
    a, b = req("a", prompt(1, 8), max_tokens=8), req("b", prompt(2, 9), max_tokens=8)
    sched.add_request(a)
    sched.add_request(b)
    for _ in range(50):
        out, _ = step(sched, backend)
        if out.preempted:
            break
    assert out.preempted == [b.seqs[0]]
    resumed = []
    while not resumed:
        out, _ = step(sched, backend)
        resumed = [c for c in out.chunks if c.seq is b.seqs[0]]
    # b's own full blocks were cached when they were freed; a's growth evicted the tail one
    # (least recently freed), the resume skips the other two.
    (resumed,) = resumed
    assert resumed.start_pos == 8 and resumed.sample
    drive(sched, backend)
    assert outputs([a, b]) == reference([a, b])


def test_sequence_outgrowing_the_whole_pool_finishes_with_length() -> None:
    sched, backend = make(num_blocks=4, block_size=4, max_len=64)
    r = req("a", prompt(1, 10), max_tokens=30)
    sched.add_request(r)
    finished = []
    while sched.has_unfinished():
        out = sched.schedule()
        finished += sched.update(out, backend.execute(sched.make_batch(out)) if out.chunks else [])
    seq = r.seqs[0]
    assert seq.finish_reason == "length" and seq in finished
    assert seq.num_tokens == 17  # 16 computed tokens fill the pool; the 17th has no slot
    assert sched.blocks.num_free_blocks == 4


# -- n choices --------------------------------------------------------------------------------


def test_n_choices_share_prompt_blocks() -> None:
    p = prompt(4, 64)
    sched, backend = make(num_blocks=64, block_size=16, caching=False)
    r = req("n4", p, n=4, max_tokens=3)
    sched.add_request(r)
    assert sched.num_waiting == 4
    peak = 0
    shared_seen = False
    while sched.has_unfinished():
        step(sched, backend)
        peak = max(peak, 64 - sched.blocks.num_free_blocks)
        live = [s for s in r.seqs if s.block_table]
        if len(live) == 4:
            shared_seen = True
            assert len({tuple(s.block_table[:3]) for s in live}) == 1
            assert all(sched.blocks.ref_count(b) == 4 for b in live[0].block_table[:3])
    assert shared_seen
    computed = backend.num_computed_tokens
    # Four separate requests for comparison.
    sched2, backend2 = make(num_blocks=64, block_size=16, caching=False)
    for i in range(4):
        sched2.add_request(req(f"s{i}", p, max_tokens=3))
    peak2 = 0
    while sched2.has_unfinished():
        step(sched2, backend2)
        peak2 = max(peak2, 64 - sched2.blocks.num_free_blocks)
    assert computed < backend2.num_computed_tokens
    assert computed == 64 + 3 * 16 + 4 * 2  # prompt once, each sibling its last block, decodes
    assert peak < peak2
    tokens = [s.output_token_ids for s in r.seqs]
    assert len({tuple(t) for t in tokens}) == 4  # seed_offset separates the choices
    assert [s.index for s in r.seqs] == [0, 1, 2, 3]
    assert sched.blocks.num_free_blocks == 64


def test_choices_are_released_ahead_of_later_requests() -> None:
    sched, backend = make(budget=10, max_seqs=8)
    r = req("n3", prompt(1, 10), n=3, max_tokens=2)
    later = req("later", prompt(2, 4), max_tokens=2)
    sched.add_request(r)
    sched.add_request(later)
    step(sched, backend)  # choice 0's whole prompt; "later" has no budget left
    assert list(sched.waiting) == [r.seqs[1], r.seqs[2], later.seqs[0]]
    drive(sched, backend)


def test_n_choices_match_reference_under_preemption() -> None:
    sched, backend = make(num_blocks=9, block_size=4, max_seqs=8)
    reqs = [req("x", prompt(1, 10), n=3, max_tokens=9), req("y", prompt(2, 7), n=2, max_tokens=7)]
    for r in reqs:
        sched.add_request(r)
    drive(sched, backend)
    assert outputs(reqs) == reference(reqs)


# -- aborts -----------------------------------------------------------------------------------


def test_abort_in_every_phase_frees_blocks() -> None:
    sched, backend = make(num_blocks=12, block_size=4, budget=8)
    running = req("running", prompt(1, 5), max_tokens=50)
    prefill = req("prefill", prompt(2, 30), max_tokens=5)
    waiting = req("waiting", prompt(3, 5), max_tokens=5)
    sched.add_request(running)
    step(sched, backend)
    step(sched, backend)  # decoding now
    sched.add_request(prefill)
    sched.add_request(waiting)
    step(sched, backend)
    assert prefill.seqs[0].status is SequenceStatus.RUNNING and prefill.seqs[0].is_prefill
    assert prefill.seqs[0].block_table
    assert waiting.seqs[0].status is SequenceStatus.WAITING
    for r in (prefill, waiting, running):
        done = sched.abort_request(r.request_id)
        assert done == r.seqs
        assert all(s.finish_reason == "abort" and not s.block_table for s in done)
        check_accounting(sched)
    assert not sched.has_unfinished()
    assert sched.blocks.num_free_blocks == 12
    assert sched.abort_request("running") == []  # already gone
    assert sched.abort_request("nope") == []


def test_abort_preempted_request() -> None:
    sched, backend = make(num_blocks=8, block_size=4)
    reqs = [req(f"r{i}", prompt(i, 6), max_tokens=12) for i in range(3)]
    for r in reqs:
        sched.add_request(r)
    while True:
        out, _ = step(sched, backend)
        if out.preempted:
            break
    victim = out.preempted[0]
    assert victim.status is SequenceStatus.WAITING and victim.output_token_ids
    sched.abort_request(victim.request_id)
    assert victim.status is SequenceStatus.FINISHED_ABORTED and victim not in sched.waiting
    drive(sched, backend)
    assert sched.blocks.num_free_blocks == 8


def test_abort_between_schedule_and_update() -> None:
    sched, backend = make()
    r = req("a", prompt(1, 9), max_tokens=5)
    sched.add_request(r)
    out = sched.schedule()
    results = backend.execute(sched.make_batch(out))
    sched.abort_request("a")
    assert sched.update(out, results) == []
    assert r.seqs[0].output_token_ids == [] and sched.blocks.num_free_blocks == 64
    assert not sched.has_unfinished()


def test_abort_pending_choices_and_single_choice_stop() -> None:
    sched, backend = make(budget=4)
    r = req("n3", prompt(1, 10), n=3, max_tokens=20)
    sched.add_request(r)
    step(sched, backend)  # choice 0 mid-prefill; 1 and 2 pending
    assert r.pending == r.seqs[1:]
    sched.abort_request("n3")
    assert all(s.finish_reason == "abort" for s in r.seqs)
    assert not sched.has_unfinished() and sched.blocks.num_free_blocks == 64 and sched.num_waiting == 0

    r = req("m3", prompt(2, 10), n=3, max_tokens=20)
    sched.add_request(r)
    for _ in range(8):
        step(sched, backend)
    # A stop string found by the API side in choice 1 ends only that choice.
    done = sched.abort_request("m3", "stop", stop_reason="###", index=1)
    assert done == [r.seqs[1]]
    assert r.seqs[1].status is SequenceStatus.FINISHED_STOPPED and r.seqs[1].stop_reason == "###"
    assert not r.seqs[0].is_finished and not r.seqs[2].is_finished
    drive(sched, backend)
    assert [s.finish_reason for s in r.seqs] == ["length", "stop", "length"]
    assert sched.blocks.num_free_blocks == 64


# -- stop conditions --------------------------------------------------------------------------


def scripted(tokens: list[int]):
    """Sample tokens[k] as the k-th output token of every sequence."""
    return lambda item, context, vocab: tokens[len(item.output_token_ids) % len(tokens)]


def run_one(params: dict, tokens: list[int], eos=(2,), max_len: int = 256) -> tuple[list[int], str, object]:
    sched, backend = make(eos=eos, sample_fn=scripted(tokens), max_len=max_len)
    params.setdefault("ignore_eos", False)
    r = req("a", prompt(1, 5), **params)
    sched.add_request(r)
    drive(sched, backend)
    s = r.seqs[0]
    return s.output_token_ids, s.finish_reason, s.stop_reason


def test_stop_on_eos() -> None:
    assert run_one({"max_tokens": 10}, [5, 6, 2, 7]) == ([5, 6, 2], "stop", None)


def test_ignore_eos() -> None:
    assert run_one({"max_tokens": 6, "ignore_eos": True}, [5, 2]) == ([5, 2, 5, 2, 5, 2], "length", None)


def test_stop_token_ids() -> None:
    assert run_one({"max_tokens": 10, "stop_token_ids": [7]}, [5, 7, 2]) == ([5, 7], "stop", 7)
    # stop_token_ids apply even with ignore_eos
    got = run_one({"max_tokens": 10, "stop_token_ids": [7], "ignore_eos": True}, [2, 2, 7])
    assert got == ([2, 2, 7], "stop", 7)


def test_max_tokens() -> None:
    assert run_one({"max_tokens": 3}, [5, 6, 8, 9]) == ([5, 6, 8], "length", None)
    # EOS as the last allowed token is a stop, not a length cut
    assert run_one({"max_tokens": 3}, [5, 6, 2]) == ([5, 6, 2], "stop", None)


def test_min_tokens_defers_eos_and_stop_tokens() -> None:
    assert run_one({"max_tokens": 10, "min_tokens": 3}, [2, 2, 2, 5]) == ([2, 2, 2], "stop", None)
    assert run_one({"max_tokens": 10, "min_tokens": 2, "stop_token_ids": [7]}, [7, 5, 7]) == (
        [7, 5, 7],
        "stop",
        7,
    )
    # max_tokens still applies before min_tokens matters
    assert run_one({"max_tokens": 2, "min_tokens": 2}, [2, 2]) == ([2, 2], "stop", None)


def test_max_model_len() -> None:
    assert run_one({"max_tokens": 50}, [5], max_len=9) == ([5, 5, 5, 5], "length", None)


def test_update_reports_tokens_and_finishes() -> None:
    sched, backend = make(eos=(2,), sample_fn=scripted([5, 2]))
    r = req("a", prompt(1, 5), max_tokens=10, ignore_eos=False, logprobs=1)
    sched.add_request(r)
    _, changed = step(sched, backend)
    assert changed == r.seqs and r.seqs[0].output_token_ids == [5]
    _, changed = step(sched, backend)
    assert changed == r.seqs and r.seqs[0].finish_reason == "stop"
    assert [lp[0].token_id for lp in r.seqs[0].output_logprobs] == [5, 2]
    assert not sched.has_unfinished()


# -- prompt logprobs --------------------------------------------------------------------------


def test_prompt_logprobs_chunked_preempted_and_not_from_cache() -> None:
    sched, backend = make(num_blocks=8, block_size=4, budget=5)
    p = prompt(9, 14)
    warm = req("warm", p, max_tokens=1)
    sched.add_request(warm)
    drive(sched, backend)  # p's blocks are cached now
    raw: list = []
    r = req("lp", p, max_tokens=12, prompt_logprobs=1)
    other = req("other", prompt(8, 6), max_tokens=12)
    sched.add_request(other)
    sched.add_request(r)
    while sched.has_unfinished():
        out = sched.schedule()
        results = backend.execute(sched.make_batch(out)) if out.chunks else []
        for chunk, res in zip(out.chunks, results, strict=True):
            if chunk.seq is r.seqs[0] and res.prompt_logprobs:
                raw.extend(res.prompt_logprobs)
        sched.update(out, results)
        check_accounting(sched)
    want = [prompt_logprob(p, i) for i in range(len(p) - 1)]
    assert r.seqs[0].num_cached_tokens == 0  # the cache cannot give prompt logprobs
    assert r.seqs[0].prompt_logprobs == want
    assert raw == want  # no position reported twice, even after a preemption
    assert outputs([r, other]) == reference([r, other])


# -- random mixes -----------------------------------------------------------------------------

BASES = [prompt(100 + i, 24) for i in range(3)]


@st.composite
def workloads(draw):
    block_size = draw(st.sampled_from([1, 2, 4]))
    max_len = 24
    min_blocks = max_len // block_size  # the engine guarantees one max_model_len sequence fits
    num_blocks = draw(st.integers(min_blocks, min_blocks + min_blocks // 2))
    requests = []
    for i in range(draw(st.integers(1, 8))):
        base = draw(st.sampled_from(BASES))
        shared = draw(st.integers(0, 14))
        tail = draw(st.lists(st.integers(0, 996), max_size=6))
        p = (base[:shared] + tail) or [1]
        max_tokens = draw(st.integers(1, max(1, max_len - len(p))))
        n = draw(st.integers(1, 3))
        plp = draw(st.sampled_from([None, None, 1]))
        requests.append((f"r{i}", p, n, max_tokens, draw(st.booleans()), plp, draw(st.integers(0, 12))))
    # (request, step, choice or None for the whole request)
    aborts = draw(
        st.lists(st.tuples(st.integers(0, 7), st.integers(0, 30), st.none() | st.integers(0, 2)), max_size=3)
    )
    return dict(
        block_size=block_size,
        num_blocks=num_blocks,
        budget=draw(st.integers(1, 24)),
        max_seqs=draw(st.integers(1, 6)),
        caching=draw(st.booleans()),
        requests=requests,
        aborts=aborts,
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_random_mixes_never_leak_and_match_reference(w) -> None:
    """Arrivals over time, n choices, prefix sharing, chunking, preemption and aborts: blocks never
    leak, every request ends, and the tokens equal those of an unconstrained run."""
    sched, backend = make(
        w["num_blocks"], w["block_size"], w["budget"], w["max_seqs"], 24, w["caching"], eos=(3,), vocab=24
    )
    reqs = [
        req(rid, p, n=n, max_tokens=mt, ignore_eos=ie, prompt_logprobs=plp)
        for rid, p, n, mt, ie, plp, _ in w["requests"]
    ]
    raw_prompt_logprobs: dict[str, list] = {r.request_id: [] for r in reqs}
    aborted: set[tuple[str, int]] = set()

    def before_step(k: int) -> None:
        for r, (*_, arrival) in zip(reqs, w["requests"], strict=True):
            if arrival == k:
                sched.add_request(r)
        for index, at, choice in w["aborts"]:
            if at == k and index < len(reqs):
                r = reqs[index]
                for s in sched.abort_request(r.request_id, index=choice):
                    aborted.add((r.request_id, s.index))

    for k in range(10_000):
        before_step(k)
        if k > 12 and not sched.has_unfinished():
            break
        if not sched.has_unfinished():
            continue
        out = sched.schedule()
        assert not out.is_empty, "deadlock"
        results = backend.execute(sched.make_batch(out)) if out.chunks else []
        for chunk, res in zip(out.chunks, results, strict=True):  # what an engine would collect
            raw_prompt_logprobs[chunk.seq.request_id] += res.prompt_logprobs or []
        sched.update(out, results)
        check_accounting(sched)
    assert sched.blocks.num_free_blocks == w["num_blocks"]
    assert sched.num_running == 0 and sched.num_waiting == 0
    for r in reqs:
        assert r.is_finished and all(not s.block_table for s in r.seqs)
    ref = reference(reqs, w["block_size"], eos=(3,), vocab=24)
    for r in reqs:
        if r.params.prompt_logprobs is not None and r.seqs[0].output_token_ids:
            want = [prompt_logprob(r.prompt_token_ids, i) for i in range(len(r.prompt_token_ids) - 1)]
            assert (r.seqs[0].prompt_logprobs or []) == want and raw_prompt_logprobs[r.request_id] == want
        for s, (ref_tokens, ref_reason) in zip(r.seqs, ref[r.request_id], strict=True):
            if (r.request_id, s.index) in aborted:
                assert (
                    s.finish_reason == "abort" and ref_tokens[: len(s.output_token_ids)] == s.output_token_ids
                )
            else:
                assert (s.output_token_ids, s.finish_reason) == (ref_tokens, ref_reason)


# -- token constraints (structured output) ----------------------------------------------------


class EvenSpec(ConstraintSpec):
    """Allows even tokens; complete after ``length`` tokens; can fail in each method."""

    def __init__(self, vocab: int = 10, length: int = 3, fail_fill=False, reject=False, dead=False) -> None:
        self.vocab, self.length, self.fail_fill, self.reject = vocab, length, fail_fill, reject
        self.dead = dead  # allows no token at all
        self.made: list[OnlyEven] = []

    def new(self) -> Constraint:
        self.made.append(OnlyEven(self))
        return self.made[-1]


class OnlyEven(Constraint):
    def __init__(self, spec: EvenSpec) -> None:
        self.spec, self.accepted = spec, []

    def fill_bitmask(self, bitmask, row: int) -> None:
        if self.spec.fail_fill:
            raise ValueError("bad grammar")
        set_allowed_tokens(bitmask, row, [] if self.spec.dead else range(0, self.spec.vocab, 2))

    def accept(self, token_id: int) -> bool:
        self.accepted.append(token_id)
        return token_id % 2 == 0 and not self.spec.reject

    def is_terminated(self) -> bool:
        return len(self.accepted) >= self.spec.length


def test_constraints_mask_accept_and_complete_each_choice_on_its_own() -> None:
    sched, backend = make(32, 4, vocab=10, eos=(1,), constraints=True)
    good, bad, rejecting = EvenSpec(), EvenSpec(fail_fill=True), EvenSpec(reject=True)
    r_good = req("good", prompt(1, 5), max_tokens=10, n=2, constraint=good)
    r_bad = req("bad", prompt(2, 5), max_tokens=10, constraint=bad)
    r_rej = req("rej", prompt(4, 5), max_tokens=10, constraint=rejecting)
    r_dead = req("dead", prompt(5, 5), max_tokens=10, constraint=EvenSpec(dead=True))
    # allowed_token_ids with only odd ids: nothing the constraint allows is left (was a junk token)
    r_odd = req("odd", prompt(6, 5), max_tokens=10, constraint=EvenSpec(), allowed_token_ids=[3, 5])
    r_some = req("some", prompt(7, 5), max_tokens=10, constraint=EvenSpec(), allowed_token_ids=[3, 4])
    plain = req("plain", prompt(3, 5), max_tokens=4)
    for r in (r_good, r_bad, r_rej, r_dead, r_odd, r_some, plain):
        sched.add_request(r)
    drive(sched, backend)
    assert len(good.made) == 2  # one constraint per choice, each with its own state
    for seq, constraint in zip(r_good.seqs, good.made, strict=True):
        assert seq.output_token_ids == constraint.accepted and len(constraint.accepted) == 3
        assert all(t % 2 == 0 for t in constraint.accepted) and seq.finish_reason == "stop"
    assert r_good.seqs[0].output_token_ids != r_good.seqs[1].output_token_ids
    # A constraint that raises or rejects ends only its own request, with an error.
    assert r_bad.seqs[0].finish_reason == "abort" and r_bad.seqs[0].output_token_ids == []
    assert "bad grammar" in r_bad.seqs[0].error
    assert r_rej.seqs[0].finish_reason == "abort" and "rejected token" in r_rej.seqs[0].error
    assert r_dead.seqs[0].output_token_ids == [] and "allows no next token" in r_dead.seqs[0].error
    assert r_odd.seqs[0].output_token_ids == [] and "none of allowed_token_ids" in r_odd.seqs[0].error
    assert r_some.seqs[0].error is None
    assert plain.seqs[0].finish_reason == "length" and len(plain.seqs[0].output_token_ids) == 4
    assert plain.seqs[0].error is None and sched.blocks.num_free_blocks == 32


def test_constrained_request_keeps_its_state_through_preemption() -> None:
    def run(num_blocks: int) -> tuple[list[Request], list[EvenSpec], int]:
        sched, backend = make(num_blocks, 4, max_seqs=3, vocab=50, constraints=True)
        specs = [EvenSpec(vocab=50, length=100) for _ in range(4)]
        reqs = [req(f"r{i}", prompt(i, 6), max_tokens=12, constraint=s) for i, s in enumerate(specs)]
        for r in reqs:
            sched.add_request(r)
        preempted = 0
        while sched.has_unfinished():
            out, _ = step(sched, backend)
            preempted += len(out.preempted)
        assert sched.blocks.num_free_blocks == num_blocks
        return reqs, specs, preempted

    reqs, specs, preempted = run(8)
    assert preempted, "the pool is too small for all of them: someone must be preempted"
    for r, spec in zip(reqs, specs, strict=True):
        tokens = r.seqs[0].output_token_ids
        assert len(tokens) == 12 and all(t % 2 == 0 for t in tokens)
        assert spec.made[0].accepted == tokens  # recomputing never accepts a token twice
    ref, _, none = run(1000)
    assert none == 0 and outputs(reqs) == outputs(ref)


def test_bitmask_only_for_constrained_sampling_rows() -> None:
    sched, backend = make(64, 4, budget=8, vocab=70, constraints=True)
    plain = req("plain", prompt(1, 3))
    sched.add_request(plain)
    out = sched.schedule()
    batch = sched.make_batch(out)
    assert batch.token_bitmask is None and batch.items[0].bitmask_row is None
    sched.update(out, backend.execute(batch))
    constrained = req("c", prompt(2, 9), constraint=EvenSpec(vocab=70, length=100))
    sched.add_request(constrained)
    out = sched.schedule()  # plain decodes; c's prompt is chunked: no sampling, no row
    batch = sched.make_batch(out)
    assert [i.sample for i in batch.items] == [True, False] and batch.token_bitmask is None
    sched.update(out, backend.execute(batch))
    out = sched.schedule()
    batch = sched.make_batch(out)
    rows = [i.bitmask_row for i in batch.items]
    assert rows == [None, 0] and batch.token_bitmask.shape == (1, bitmask_words(70))
    assert batch.token_bitmask.dtype == np.int32
    allowed = np.flatnonzero(
        (batch.token_bitmask.view(np.uint32)[0, :, None] >> np.arange(32, dtype=np.uint32)) & 1
    )
    assert allowed.tolist() == list(range(0, 70, 2))
    sched.update(out, backend.execute(batch))


def test_bad_constraint_specs_are_rejected_as_requests() -> None:
    class Broken(ConstraintSpec):
        def new(self) -> Constraint:
            raise RuntimeError("cannot compile the schema")

    with pytest.raises(InvalidRequestError, match="cannot compile the schema"):
        req("x", prompt(1, 3), constraint=Broken())
    with pytest.raises(InvalidRequestError, match="ConstraintSpec") as info:
        SamplingParams(constraint=object())
    assert info.value.param == "constraint"
    no_vocab, _ = make()
    with pytest.raises(InvalidRequestError, match="structured output"):
        no_vocab.add_request(req("c", prompt(1, 3), constraint=EvenSpec()))


def test_abort_of_a_constrained_request_frees_everything() -> None:
    sched, backend = make(16, 4, vocab=10, constraints=True)
    spec = EvenSpec(length=100)
    r = req("a", prompt(1, 7), n=2, max_tokens=20, constraint=spec)
    sched.add_request(r)
    for _ in range(3):
        step(sched, backend)
    assert all(s.block_table for s in r.seqs)
    assert len(sched.abort_request("a")) == 2
    check_accounting(sched)
    assert sched.blocks.num_free_blocks == 16 and not sched.has_unfinished()
    assert all(s.constraint is None for s in r.seqs)  # matcher state released


# -- priority scheduling ----------------------------------------------------------------------


def started_order(backend: FakeBackend, reqs: list[Request]) -> list[str]:
    first = {}
    for k, st_ in enumerate(backend.steps):
        for item in st_:
            first.setdefault(item.seq_id, k)
    return [r.request_id for r in sorted(reqs, key=lambda r: (first[r.seqs[0].seq_id], r.request_id))]


def test_priority_admits_lower_value_first_then_earlier_arrival() -> None:
    sched, backend = make(max_seqs=1, policy="priority")
    reqs = [
        req("a", prompt(1, 5), priority=2, arrival=1.0, max_tokens=2),
        req("b", prompt(2, 5), priority=0, arrival=2.0, max_tokens=2),
        req("c", prompt(3, 5), priority=2, arrival=0.5, max_tokens=2),
        req("d", prompt(4, 5), priority=-1, arrival=3.0, max_tokens=2),
    ]
    for r in reqs:
        sched.add_request(r)
    drive(sched, backend)
    assert started_order(backend, reqs) == ["d", "b", "c", "a"]
    fcfs, fcfs_backend = make(max_seqs=1)
    plain = [req(r.request_id, r.prompt_token_ids, max_tokens=2) for r in reqs]
    for r in plain:
        fcfs.add_request(r)
    drive(fcfs, fcfs_backend)
    assert started_order(fcfs_backend, plain) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
def test_preemption_victim_follows_the_policy(policy) -> None:
    sched, backend = make(num_blocks=8, block_size=4, max_seqs=3, policy=policy)
    # "low" (priority value 5) is admitted first; 18 tokens each need 5 of the 8 blocks.
    low = req("low", prompt(1, 6), priority=5 if policy == "priority" else 0, arrival=0.0, max_tokens=12)
    high = req("high", prompt(2, 6), arrival=1.0, max_tokens=12)
    sched.add_request(low)
    sched.add_request(high)
    preempted = []
    while sched.has_unfinished():
        out, _ = step(sched, backend)
        preempted += out.preempted
        scheduled = {c.seq for c in out.chunks}
        assert not scheduled & set(out.preempted)  # a preempted chunk never runs
        assert out.num_tokens <= sched.config.max_num_batched_tokens
    victim, spared = (low, high) if policy == "priority" else (high, low)
    assert victim.seqs[0] in preempted and spared.seqs[0] not in preempted
    assert outputs([low, high]) == reference([low, high])
    assert sched.blocks.num_free_blocks == 8


def test_priority_needs_the_priority_policy() -> None:
    sched, _ = make()
    with pytest.raises(InvalidRequestError, match="priority") as info:
        sched.add_request(req("p", prompt(1, 3), priority=1))
    assert info.value.param == "priority"
    with pytest.raises(ConfigError, match="scheduling_policy"):
        SchedulerConfig(4, 64, 64, 4, scheduling_policy="lifo")
    with pytest.raises(InvalidRequestError, match="integer"):
        req("q", prompt(1, 3), priority=1.5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(), st.lists(st.integers(-2, 2), min_size=8, max_size=8))
def test_priority_random_mixes_never_leak_and_match_reference(w, priorities) -> None:
    sched, backend = make(
        w["num_blocks"], w["block_size"], w["budget"], w["max_seqs"], 24, w["caching"], eos=(3,), vocab=24,
        policy="priority",
    )  # fmt: skip
    reqs = [
        req(rid, p, priority=prio, n=n, max_tokens=mt, ignore_eos=ie)
        for (rid, p, n, mt, ie, _, _), prio in zip(w["requests"], priorities, strict=False)
    ]
    arrivals = [arrival for *_, arrival in w["requests"]]
    for k in range(10_000):
        for r, arrival in zip(reqs, arrivals, strict=True):
            if arrival == k:
                sched.add_request(r)
        if k > 12 and not sched.has_unfinished():
            break
        if sched.has_unfinished():
            out = sched.schedule()
            assert not out.is_empty, "deadlock"
            sched.update(out, backend.execute(sched.make_batch(out)) if out.chunks else [])
            check_accounting(sched)
    assert sched.blocks.num_free_blocks == w["num_blocks"] and sched.num_waiting == 0
    assert outputs(reqs) == reference(reqs, w["block_size"], eos=(3,), vocab=24)


def test_a_compiling_constraint_holds_back_only_the_last_prompt_token() -> None:
    """The prompt is computed while the grammar compiles; sampling waits for it, others go on."""
    from concurrent.futures import Future

    from llmserve.structured.pending import PendingSpec

    sched, backend = make(32, 4, budget=256, vocab=10, constraints=True)
    compiled: Future = Future()
    waiting = req("waits", prompt(1, 9), max_tokens=4, constraint=PendingSpec(compiled, 10, RuntimeError))
    plain = req("plain", prompt(2, 5), max_tokens=4)
    sched.add_request(waiting)
    sched.add_request(plain)
    out, _ = step(sched, backend)
    chunks = {c.seq.request_id: (c.num_new_tokens, c.sample) for c in out.chunks}
    assert chunks == {"waits": (8, False), "plain": (5, True)}
    for _ in range(3):  # still compiling: the other request decodes, this one waits
        out, _ = step(sched, backend)
        assert [c.seq.request_id for c in out.chunks] == ["plain"]
    spec = EvenSpec(length=2)
    compiled.set_result(spec)
    out, _ = step(sched, backend)
    assert ("waits", 1, True) in [(c.seq.request_id, c.num_new_tokens, c.sample) for c in out.chunks]
    drive(sched, backend)
    assert (
        all(t % 2 == 0 for t in waiting.seqs[0].output_token_ids) and waiting.seqs[0].finish_reason == "stop"
    )
    assert sched.blocks.num_free_blocks == 32


def test_a_compile_ending_mid_schedule_never_schedules_an_empty_chunk() -> None:
    """The compile ends on another thread: it may end between two reads of `compiling` in one
    schedule() (seen as 'batch item has no tokens', an engine death)."""
    from concurrent.futures import Future

    from llmserve.structured.pending import PendingSpec

    sched, backend = make(32, 4, budget=256, vocab=10, constraints=True)
    compiled: Future = Future()
    waiting = req("waits", prompt(1, 9), max_tokens=4, constraint=PendingSpec(compiled, 10, RuntimeError))
    sched.add_request(waiting)
    step(sched, backend)  # the prompt but its last token
    constraint = waiting.seqs[0].constraint
    answers = iter([False])  # not ready at the first read, ready from the second on

    def flips() -> bool:
        ready = next(answers, True)
        if ready and not compiled.done():
            compiled.set_result(EvenSpec(length=2))
        return ready

    constraint.is_ready = flips
    for _ in range(3):
        out = sched.schedule()
        assert all(c.num_new_tokens > 0 for c in out.chunks), out.chunks
        sched.update(out, backend.execute(sched.make_batch(out)) if out.chunks else [])
    drive(sched, backend)
    assert waiting.seqs[0].finish_reason == "stop" and sched.blocks.num_free_blocks == 32
