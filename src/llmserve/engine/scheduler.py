"""Continuous batching over the paged KV cache: token budget, chunked prefill, preemption.

Each step: running decodes first, then running prefills (a long prompt continues where its last
chunk stopped), then waiting sequences in FCFS order while blocks, sequence slots and token
budget last. When a running sequence needs a block and none is free, the most recently admitted
running sequence is preempted by recompute: its blocks are freed and it goes back to the front of
the waiting queue, keeping its output tokens, which are recomputed with the prompt on resume.

The n choices of a request share the prompt: choice 0 computes it, then the other choices are
released and admitted sharing its full prompt blocks (ref-counted), computing only the tail.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from llmserve.backends.base import Batch, BatchItem, SampleResult, TokenLogprob
from llmserve.engine.kv_cache import BlockManager
from llmserve.engine.request import FINISH_STATUS, Request, Sequence, SequenceStatus
from llmserve.errors import ConfigError, InvalidRequestError

RUNNING, WAITING = SequenceStatus.RUNNING, SequenceStatus.WAITING
log = logging.getLogger("llmserve.engine")


@dataclass(slots=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    block_size: int
    vocab_size: int | None = None  # needed only for requests with a TokenConstraint

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "block_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(slots=True)
class ScheduledChunk:
    """Compute tokens [start_pos, start_pos + num_new_tokens) of ``seq``; sample after them if
    ``sample`` (the chunk reaches the sequence's last token)."""

    seq: Sequence
    num_new_tokens: int
    sample: bool
    start_pos: int = -1  # defaults to seq.num_computed_tokens at scheduling time

    def __post_init__(self) -> None:
        if self.start_pos < 0:
            self.start_pos = self.seq.num_computed_tokens

    @property
    def end_pos(self) -> int:
        return self.start_pos + self.num_new_tokens


@dataclass(slots=True)
class SchedulerOutput:
    """One step's plan. ``finished`` holds sequences ended while scheduling (they outgrew the whole
    KV pool); pass the output to ``update`` even when there are no chunks so they get reported."""

    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.chunks and not self.finished

    @property
    def num_tokens(self) -> int:
        return sum(c.num_new_tokens for c in self.chunks)


class Scheduler:
    """Decides each step's work and applies its results; owns the waiting and running queues."""

    def __init__(
        self, config: SchedulerConfig, blocks: BlockManager, eos_token_ids: tuple[int, ...] = ()
    ) -> None:
        if config.block_size != blocks.block_size:
            raise ConfigError(f"block_size {config.block_size} != block manager's {blocks.block_size}")
        self.config = config
        self.blocks = blocks
        self.eos_token_ids = frozenset(eos_token_ids)
        self.requests: dict[str, Request] = {}  # unfinished requests
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the last is preempted first
        self._failed: set[int] = set()  # seq ids whose token constraint raised in make_batch

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + sum(len(r.pending) for r in self.requests.values())

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def add_request(self, req: Request) -> None:
        """Queue a request; InvalidRequestError if its prompt can never be scheduled."""
        if req.request_id in self.requests:
            raise InvalidRequestError(f"request id {req.request_id!r} is already in use")
        num_prompt = len(req.prompt_token_ids)
        if num_prompt > self.config.max_model_len:
            raise InvalidRequestError(
                f"This model's maximum context length is {self.config.max_model_len} tokens. "
                f"However, your prompt has {num_prompt} tokens.",
                param="prompt",
            )
        need, have = self.blocks.blocks_for(num_prompt), self.blocks.num_blocks
        if need > have:
            raise InvalidRequestError(
                f"the prompt ({num_prompt} tokens) needs {need} KV cache blocks but the cache has {have}",
                param="prompt",
            )
        if req.params.constraint is not None:
            if self.config.vocab_size is None:
                raise InvalidRequestError("structured output is not available: the engine has no vocab size")
            if req.params.n > 1:  # one constraint object cannot track n different choices
                raise InvalidRequestError("n > 1 is not supported with structured output", param="n")
        self.requests[req.request_id] = req
        self.waiting.append(req.seqs[0])
        req.pending = list(req.seqs[1:])

    # -- scheduling ---------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        scheduled: set[int] = set()
        for decodes in (True, False):
            for seq in list(self.running):
                if budget == 0:
                    break
                if seq.status is not RUNNING or seq.is_decode is not decodes:
                    continue  # preempted earlier in this step, or not this pass
                num_new = self._chunk_size(seq, seq.num_computed_tokens, budget)
                if self._reserve(seq, num_new, scheduled, out):
                    out.chunks.append(
                        ScheduledChunk(seq, num_new, seq.num_computed_tokens + num_new == seq.num_tokens)
                    )
                    scheduled.add(seq.seq_id)
                    budget -= num_new
        if out.preempted:  # memory is tight: admitting now would only preempt again
            return out
        bs, caching = self.config.block_size, self.blocks.enable_prefix_caching
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            shared = self._shared_prefix(seq)
            num_computed = len(shared) * bs
            num_new = self._chunk_size(seq, num_computed, budget)
            if not self.blocks.can_allocate(shared, num_computed + num_new):
                break  # FCFS: nobody overtakes the head
            self.waiting.popleft()
            if seq.num_preemptions == 0 and seq.index == 0 and self._may_use_cache(seq) and caching:
                self.blocks.record_query(seq.num_tokens, num_computed)
                seq.num_cached_tokens = num_computed
            self.blocks.allocate(seq, shared, num_computed + num_new)
            seq.num_computed_tokens = num_computed
            seq.status = RUNNING
            self.running.append(seq)
            out.chunks.append(ScheduledChunk(seq, num_new, num_computed + num_new == seq.num_tokens))
            budget -= num_new
        return out

    def _chunk_size(self, seq: Sequence, start: int, budget: int) -> int:
        num_new = min(seq.num_tokens - start, budget)
        if self._prompt_logprobs_left(seq):
            # After a preemption, recompute what was delivered in chunks of its own so that no
            # chunk asks for prompt logprobs it already returned.
            done = len(seq.prompt_logprobs or ())
            if start < done < start + num_new:
                num_new = done - start
        return num_new

    def _reserve(self, seq: Sequence, num_new: int, scheduled: set[int], out: SchedulerOutput) -> bool:
        """Make room for ``num_new`` more tokens of a running sequence, preempting the most recently
        admitted unscheduled sequences; False if ``seq`` itself had to go."""
        while not self.blocks.grow(seq, seq.num_computed_tokens + num_new):
            victim = next(s for s in reversed(self.running) if s.seq_id not in scheduled)
            self._preempt(victim, out)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.num_computed_tokens = 0
        if self.blocks.blocks_for(seq.num_tokens) > self.blocks.num_blocks:
            # It has outgrown the whole pool: resuming could never succeed.
            self._finish(seq, "length")
            out.finished.append(seq)
            return
        seq.status = WAITING
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)
        out.preempted.append(seq)

    def _may_use_cache(self, seq: Sequence) -> bool:
        # Prompt logprobs need every prompt position computed (as in vLLM), until delivered once.
        return not self._prompt_logprobs_left(seq)

    def _prompt_logprobs_left(self, seq: Sequence) -> bool:
        if seq.params.prompt_logprobs is None or seq.index != 0:
            return False
        return len(seq.prompt_logprobs or ()) < seq.num_prompt_tokens - 1

    def _wants_prompt_logprobs(self, chunk: ScheduledChunk) -> bool:
        seq = chunk.seq
        if not self._prompt_logprobs_left(seq):
            return False
        done = len(seq.prompt_logprobs or ())
        return max(chunk.start_pos, done) < min(chunk.end_pos, seq.num_prompt_tokens - 1)

    def _shared_prefix(self, seq: Sequence) -> list[int]:
        """Blocks a waiting sequence can share: prefix-cache hits or a running sibling's full prompt
        blocks, whichever covers more; never its last token."""
        if not self._may_use_cache(seq):
            return []
        best = self.blocks.match_prefix(seq)
        bs = self.config.block_size
        limit = min((seq.num_tokens - 1) // bs, seq.num_prompt_tokens // bs)
        req = self.requests[seq.request_id]
        if req.params.n > 1 and len(best) < limit:
            for sib in req.seqs:
                if sib is not seq and sib.status is RUNNING:
                    k = min(limit, sib.num_computed_tokens // bs)
                    if k > len(best):
                        best = sib.block_table[:k]
        return best

    # -- batch and results --------------------------------------------------------------------

    def make_batch(self, out: SchedulerOutput) -> Batch:
        """The backend's view of the step. Block tables and token lists are the live ones: valid
        until ``update``."""
        items = []
        for chunk in out.chunks:
            seq = chunk.seq
            params = seq.params
            mask = None
            if chunk.sample and params.constraint is not None:
                try:
                    mask = params.constraint.allowed_mask(self.config.vocab_size)
                except Exception:  # a broken grammar ends its request, never the engine
                    log.exception("token constraint failed for request %s", seq.request_id)
                    self._failed.add(seq.seq_id)
            items.append(
                BatchItem(
                    seq_id=seq.seq_id,
                    token_ids=seq.token_ids(chunk.start_pos, chunk.end_pos),
                    start_pos=chunk.start_pos,
                    block_table=seq.block_table,
                    sample=chunk.sample,
                    params=params,
                    prompt_token_ids=seq.prompt_token_ids,
                    output_token_ids=seq.output_token_ids,
                    seed_offset=seq.index,
                    want_prompt_logprobs=self._wants_prompt_logprobs(chunk),
                    allowed_mask=mask,
                )
            )
        return Batch(items=items, block_size=self.config.block_size)

    def update(self, out: SchedulerOutput, results: list[SampleResult]) -> list[Sequence]:
        """Apply a step's results: advance computed tokens, register full blocks in the prefix
        cache, append sampled tokens, apply stop rules, free finished sequences' blocks. Returns
        the sequences that got a token or finished, in batch order (pool-capped ones first)."""
        if len(results) != len(out.chunks):
            raise ValueError(f"{len(results)} results for {len(out.chunks)} scheduled chunks")
        emitted = list(out.finished)
        any_finished = False
        for chunk, result in zip(out.chunks, results, strict=True):
            seq = chunk.seq
            if result.seq_id != seq.seq_id:
                raise ValueError(f"result for seq {result.seq_id} where seq {seq.seq_id} was expected")
            if seq.is_finished:  # aborted after scheduling
                continue
            seq.num_computed_tokens += chunk.num_new_tokens
            self.blocks.cache_full_blocks(seq)
            if result.prompt_logprobs is not None and self._prompt_logprobs_left(seq):
                self._add_prompt_logprobs(seq, chunk.start_pos, result.prompt_logprobs)
            if not chunk.sample:
                continue
            if result.token_id is None:
                raise ValueError(f"backend did not sample for seq {seq.seq_id}")
            if not self._append_token(seq, result):
                self.running.remove(seq)
                self._finish(seq, "abort")
                emitted.append(seq)
                continue
            req = self.requests[seq.request_id]
            if req.pending and seq.index == 0:
                self._release_pending(req)
            reason = self._stop_reason(seq)
            if reason is not None:
                self._finish(seq, *reason)
                any_finished = True
            emitted.append(seq)
        self._failed.clear()
        if any_finished:
            self.running = [s for s in self.running if s.status is RUNNING]
        return emitted

    def _append_token(self, seq: Sequence, result: SampleResult) -> bool:
        """Append the sampled token; False if the sequence's token constraint failed."""
        token = result.token_id
        if seq.seq_id in self._failed:
            self._failed.discard(seq.seq_id)
            return False
        if seq.params.constraint is not None:
            try:
                seq.params.constraint.accept(token)
            except Exception:
                log.exception("token constraint rejected token %s of request %s", token, seq.request_id)
                return False
        seq.output_token_ids.append(token)
        if seq.output_logprobs is not None:
            chosen = TokenLogprob(token, result.logprob, result.rank or 1)
            seq.output_logprobs.append((chosen, result.top_logprobs or []))
        return True

    def _add_prompt_logprobs(self, seq: Sequence, start: int, entries: list) -> None:
        # entries cover positions start.. of this chunk; skip those delivered before a preemption
        if seq.prompt_logprobs is None:
            seq.prompt_logprobs = []
        done = len(seq.prompt_logprobs)
        if start <= done:
            seq.prompt_logprobs.extend(entries[done - start : seq.num_prompt_tokens - 1 - start])

    def _stop_reason(self, seq: Sequence) -> tuple[str, int | None] | None:
        """(finish_reason, stop_reason) if the last sampled token ends the sequence."""
        params, token = seq.params, seq.output_token_ids[-1]
        if seq.num_output_tokens >= params.min_tokens:
            if not params.ignore_eos and token in self.eos_token_ids:
                return "stop", None
            if token in params.stop_token_ids:
                return "stop", token
            if params.constraint is not None and params.constraint.is_finished():
                return "stop", None
        if params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens:
            return "length", None
        if seq.num_tokens >= self.config.max_model_len:
            return "length", None
        return None

    def _release_pending(self, req: Request) -> None:
        """Choice 0 has computed the prompt: queue the other choices first in line."""
        for sib in req.pending:
            sib.num_cached_tokens = req.seqs[0].num_cached_tokens
        self.waiting.extendleft(reversed(req.pending))
        req.pending = []

    def _finish(self, seq: Sequence, finish_reason: str, stop_reason: int | str | None = None) -> None:
        """Mark finished and free blocks; the caller removes it from the running/waiting queue."""
        seq.status = FINISH_STATUS[finish_reason]
        seq.finish_reason = finish_reason
        seq.stop_reason = stop_reason
        self.blocks.free(seq)
        req = self.requests.get(seq.request_id)
        if req is None:
            return
        if req.pending and seq.index == 0:  # choice 0 ended before computing the prompt
            self._release_pending(req)
        if req.is_finished:
            del self.requests[seq.request_id]

    def abort_request(
        self,
        request_id: str,
        finish_reason: str = "abort",
        stop_reason: int | str | None = None,
        index: int | None = None,
    ) -> list[Sequence]:
        """Finish a request's unfinished sequences (only choice ``index`` if given) and free their
        blocks now. Returns the sequences it finished; unknown or finished requests give []."""
        if finish_reason not in FINISH_STATUS:
            raise ValueError(f"finish_reason must be one of {sorted(FINISH_STATUS)}, got {finish_reason!r}")
        req = self.requests.get(request_id)
        if req is None:
            return []
        targets = [s for s in req.seqs if not s.is_finished and (index is None or s.index == index)]
        if index is None:
            req.pending = []  # all of them are going
        for seq in targets:
            if seq.status is RUNNING:
                self.running.remove(seq)
            elif seq in req.pending:
                req.pending.remove(seq)
            elif seq in self.waiting:
                self.waiting.remove(seq)
            self._finish(seq, finish_reason, stop_reason)
        return targets
