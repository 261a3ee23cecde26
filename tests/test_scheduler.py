"""Scheduler + block manager driven by a fake runner that checks the KV cache on every step."""

from __future__ import annotations

import pytest
from fake_backend import FakeBackend, check_accounting, drive, prompt_logprob
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmserve.engine.kv_cache import BlockManager
from llmserve.engine.request import Request, SequenceStatus
from llmserve.engine.sampling import SamplingParams
from llmserve.engine.scheduler import Scheduler, SchedulerConfig
from llmserve.errors import InvalidRequestError


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
) -> tuple[Scheduler, FakeBackend]:
    config = SchedulerConfig(max_seqs, budget, max_len, block_size)
    sched = Scheduler(config, BlockManager(num_blocks, block_size, caching), eos)
    backend = FakeBackend(num_blocks, block_size, vocab)
    if sample_fn is not None:
        backend.sample_fn = sample_fn
    return sched, backend


def req(rid: str, prompt: list[int], **params) -> Request:
    params.setdefault("max_tokens", 8)
    params.setdefault("ignore_eos", True)
    return Request.create(rid, prompt, SamplingParams(temperature=0, **params))


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


class OnlyEven:
    """Allows even tokens; finished after ``length`` tokens; can be told to fail."""

    def __init__(self, length: int = 3, fail: bool = False) -> None:
        self.accepted: list[int] = []
        self.length, self.fail = length, fail

    def allowed_mask(self, vocab_size: int):
        if self.fail:
            raise ValueError("bad grammar")
        return [t % 2 == 0 for t in range(vocab_size)]

    def accept(self, token_id: int) -> None:
        self.accepted.append(token_id)

    def is_finished(self) -> bool:
        return len(self.accepted) >= self.length


def test_token_constraint_mask_accept_and_finish() -> None:
    def sample_allowed(item, context, vocab):
        allowed = [t for t in range(vocab) if item.allowed_mask is None or item.allowed_mask[t]]
        return allowed[len(context) % len(allowed)]

    config = SchedulerConfig(8, 64, 128, 4, vocab_size=10)
    sched = Scheduler(config, BlockManager(32, 4), eos_token_ids=(1,))
    backend = FakeBackend(32, 4, 10, sample_allowed)
    good, bad = OnlyEven(), OnlyEven(fail=True)
    r_good = req("good", prompt(1, 5), max_tokens=10, constraint=good)
    r_bad = req("bad", prompt(2, 5), max_tokens=10, constraint=bad)
    plain = req("plain", prompt(3, 5), max_tokens=4)
    for r in (r_good, r_bad, plain):
        sched.add_request(r)
    drive(sched, backend)
    assert r_good.seqs[0].output_token_ids == good.accepted and len(good.accepted) == 3
    assert all(t % 2 == 0 for t in good.accepted) and r_good.seqs[0].finish_reason == "stop"
    # A constraint that raises ends only its own request.
    assert r_bad.seqs[0].finish_reason == "abort" and r_bad.seqs[0].output_token_ids == []
    assert plain.seqs[0].finish_reason == "length" and len(plain.seqs[0].output_token_ids) == 4
    assert sched.blocks.num_free_blocks == 32
    with pytest.raises(InvalidRequestError, match="n > 1"):
        sched.add_request(req("n2", prompt(1, 3), n=2, constraint=OnlyEven()))
    no_vocab, _ = make()
    with pytest.raises(InvalidRequestError, match="structured output"):
        no_vocab.add_request(req("c", prompt(1, 3), constraint=OnlyEven()))
