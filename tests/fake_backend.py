"""A fake model runner for engine tests: a fake paged KV pool that is checked on every step.

Each slot of the pool remembers the (token id, position) written there. Before "sampling", every
item's whole context is read back through its block table and compared with the sequence's
tokens, so a wrong block table, a bad prefix-cache hit or a block shared while being written
fails the step. Sampling is a deterministic function of the context and the choice index; under a token bitmask,
a banned token is replaced by an allowed one (also deterministically).
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from llmserve.backends.base import Batch, BatchItem, SampleResult, TokenLogprob
from llmserve.engine.constraints import allowed_token_ids
from llmserve.engine.request import SequenceStatus
from llmserve.engine.scheduler import Scheduler


def default_sample(item: BatchItem, context: list[int], vocab_size: int) -> int:
    data = array("q", context).tobytes() + item.seed_offset.to_bytes(4, "little")
    return zlib.crc32(data) % vocab_size


@dataclass
class StepRecord:
    """What one item of one step computed: (seq_id, start_pos, num_tokens, sample)."""

    seq_id: int
    start_pos: int
    num_tokens: int
    sample: bool


@dataclass
class FakeBackend:
    num_blocks: int
    block_size: int
    vocab_size: int = 1000
    sample_fn: Callable[[BatchItem, list[int], int], int] = default_sample
    kv: list = field(init=False)
    steps: list[list[StepRecord]] = field(default_factory=list)
    num_computed_tokens: int = 0

    def __post_init__(self) -> None:
        self.kv = [None] * (self.num_blocks * self.block_size)

    def _slot(self, table: list[int], pos: int) -> int:
        index = pos // self.block_size
        if index >= len(table):
            raise AssertionError(f"position {pos} beyond block table {table}")
        block = table[index]
        if not 0 <= block < self.num_blocks:
            raise AssertionError(f"block id {block} out of range")
        return block * self.block_size + pos % self.block_size

    def execute(self, batch: Batch) -> list[SampleResult]:
        if batch.block_size != self.block_size:
            raise AssertionError("batch block size differs from the pool's")
        seq_ids = [item.seq_id for item in batch.items]
        if len(set(seq_ids)) != len(seq_ids):
            raise AssertionError(f"a sequence appears twice in one batch: {seq_ids}")
        contexts = []
        # Write every item's new K/V first, as one forward pass would, then read back.
        for item in batch.items:
            context = list(item.prompt_token_ids) + list(item.output_token_ids)
            if item.end_pos > len(context) or item.token_ids != context[item.start_pos : item.end_pos]:
                raise AssertionError(f"seq {item.seq_id}: new tokens do not match the sequence")
            for pos in range(item.start_pos, item.end_pos):
                self.kv[self._slot(item.block_table, pos)] = (context[pos], pos)
            contexts.append(context[: item.end_pos])
            self.num_computed_tokens += len(item.token_ids)
        results = []
        for item, context in zip(batch.items, contexts, strict=True):
            for pos, token in enumerate(context):
                got = self.kv[self._slot(item.block_table, pos)]
                if got != (token, pos):
                    raise AssertionError(
                        f"seq {item.seq_id}: KV at position {pos} holds {got}, want {(token, pos)}"
                    )
            results.append(self._result(item, context, batch.token_bitmask))
        self.steps.append(
            [StepRecord(i.seq_id, i.start_pos, len(i.token_ids), i.sample) for i in batch.items]
        )
        return results

    def _result(self, item: BatchItem, context: list[int], bitmask) -> SampleResult:
        result = SampleResult(seq_id=item.seq_id)
        if item.want_prompt_logprobs:
            prompt = item.prompt_token_ids
            stop = min(item.end_pos, len(prompt) - 1)
            result.prompt_logprobs = [prompt_logprob(prompt, p) for p in range(item.start_pos, stop)]
        if item.sample:
            token = self.sample_fn(item, context, self.vocab_size)
            if item.bitmask_row is not None:
                allowed = allowed_token_ids(bitmask, item.bitmask_row, self.vocab_size).tolist()
                if token not in allowed and allowed:
                    token = allowed[token % len(allowed)]
            result.token_id = token
            result.logprob = -(token % 7) / 10
            result.rank = 1
            if item.params.logprobs:
                result.top_logprobs = [TokenLogprob(token, result.logprob)]
        return result


def prompt_logprob(prompt, pos: int) -> tuple[TokenLogprob, list[TokenLogprob]]:
    """The fake logprob of prompt token pos+1 given the tokens before it."""
    return (TokenLogprob(prompt[pos + 1], -pos / 100), [])


def check_accounting(sched: Scheduler) -> None:
    """Every block's ref count equals the number of live block tables holding it; free blocks are
    exactly the unreferenced ones; waiting sequences hold nothing."""
    blocks = sched.blocks
    live = list(sched.running) + list(sched.waiting)
    for req in sched.requests.values():
        live += req.pending
        for seq in req.seqs:
            seq.check_invariants(blocks.block_size)
    counts = [0] * blocks.num_blocks
    for seq in live:
        if seq.is_finished:
            raise AssertionError(f"finished seq {seq.seq_id} still queued")
        if seq.status is SequenceStatus.WAITING and seq.block_table:
            raise AssertionError(f"waiting seq {seq.seq_id} holds blocks")
        for block_id in seq.block_table:
            counts[block_id] += 1
    for block_id, count in enumerate(counts):
        if blocks.ref_count(block_id) != count:
            raise AssertionError(
                f"block {block_id}: ref count {blocks.ref_count(block_id)}, held {count} times"
            )
    if blocks.num_free_blocks != counts.count(0):
        raise AssertionError(f"{blocks.num_free_blocks} free blocks, {counts.count(0)} unreferenced")
    if len(sched.running) > sched.config.max_num_seqs:
        raise AssertionError("more running sequences than max_num_seqs")


def drive(
    sched: Scheduler,
    backend: FakeBackend,
    max_steps: int = 10_000,
    before_step: Callable[[int], None] | None = None,
    check: bool = True,
) -> int:
    """Step until every request is finished; return the number of steps. A step with nothing to
    do while requests remain is a deadlock."""
    for step in range(max_steps):
        if before_step is not None:
            before_step(step)
        if not sched.has_unfinished():
            return step
        out = sched.schedule()
        if out.is_empty:
            raise AssertionError(f"deadlock: nothing scheduled, {sched.num_waiting} waiting")
        results = backend.execute(sched.make_batch(out)) if out.chunks else []
        sched.update(out, results)
        if out.chunks and sum(c.num_new_tokens for c in out.chunks) > sched.config.max_num_batched_tokens:
            raise AssertionError("token budget exceeded")
        if check:
            check_accounting(sched)
    raise AssertionError("did not finish")
