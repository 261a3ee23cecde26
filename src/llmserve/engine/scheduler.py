"""Continuous batching over the paged KV cache: token budget, chunked prefill, preemption.

Each step: running decodes first, then running prefills (a long prompt continues where its last
chunk stopped), then waiting sequences in the policy's order (engine/waiting_queue.py) while
blocks, sequence slots and token budget last. When a running sequence needs a block and none is
free, one running sequence is preempted by recompute: under "fcfs" the most recently admitted,
under "priority" the one with the highest (priority, arrival), as in vLLM. Its blocks are freed
and it waits again, keeping its output tokens (and its constraint's state), which are recomputed
with the prompt on resume.

The n choices of a request share the prompt: choice 0 computes it, then the other choices are
released and admitted sharing its full prompt blocks (ref-counted), computing only the tail.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmserve.backends.base import Batch, BatchItem, SampleResult, TokenLogprob
from llmserve.engine.constraint_steps import StepBitmask, accept_token
from llmserve.engine.kv_cache import BlockManager
from llmserve.engine.request import FINISH_STATUS, Request, Sequence, SequenceStatus
from llmserve.engine.waiting_queue import POLICIES, make_waiting_queue, schedule_key
from llmserve.errors import ConfigError, InvalidRequestError

RUNNING, WAITING = SequenceStatus.RUNNING, SequenceStatus.WAITING


@dataclass(slots=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    block_size: int
    vocab_size: int | None = None  # needed only for requests with a constraint
    scheduling_policy: str = "fcfs"  # or "priority" (see engine/waiting_queue.py)

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "block_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.scheduling_policy not in POLICIES:
            raise ConfigError(
                f"scheduling_policy must be one of {', '.join(POLICIES)}; got {self.scheduling_policy!r}"
            )


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
        self.waiting = make_waiting_queue(config.scheduling_policy)
        self.running: list[Sequence] = []  # in admission order
        self._by_priority = config.scheduling_policy == "priority"
        self._bitmask = StepBitmask(config.vocab_size) if config.vocab_size else None
        self._failed: dict[int, str] = {}  # seq id -> error of a constraint that raised in make_batch

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
        if req.params.constraint is not None and self._bitmask is None:
            raise InvalidRequestError("structured output is not available: the engine has no vocab size")
        if req.priority != 0 and not self._by_priority:
            raise InvalidRequestError(
                f"priority {req.priority} needs the 'priority' scheduling policy (this engine is "
                f"{self.config.scheduling_policy!r})",
                param="priority",
            )
        self.requests[req.request_id] = req
        self.waiting.add(req.seqs[0])
        req.pending = list(req.seqs[1:])

    # -- scheduling ---------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        scheduled: dict[int, ScheduledChunk] = {}
        for decodes in (True, False):
            for seq in list(self.running):
                if budget == 0:
                    break
                if seq.status is not RUNNING or seq.is_decode is not decodes:
                    continue  # preempted earlier in this step, or not this pass
                num_new = self._chunk_size(seq, seq.num_computed_tokens, budget)
                if num_new == 0:  # its prompt is computed; it samples once its constraint is compiled
                    continue  # (not `and seq.compiling`: the compile may end between the two reads)
                freed = self._reserve(seq, num_new, scheduled, out)
                if freed is not None:
                    chunk = ScheduledChunk(seq, num_new, seq.num_computed_tokens + num_new == seq.num_tokens)
                    out.chunks.append(chunk)
                    scheduled[seq.seq_id] = chunk
                    budget += freed - num_new
        if out.preempted:  # memory is tight: admitting now would only preempt again
            return out
        bs, caching = self.config.block_size, self.blocks.enable_prefix_caching
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting.peek()
            shared = self._shared_prefix(seq)
            num_computed = len(shared) * bs
            num_new = self._chunk_size(seq, num_computed, budget)
            held = num_new == 0  # only a compiling constraint holds a prompt's last token back
            if held or not self.blocks.can_allocate(shared, num_computed + num_new):
                break  # nobody overtakes the head of the queue (not even one whose constraint compiles)
            self.waiting.pop()
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
        if seq.compiling and start + num_new == seq.num_tokens:
            num_new -= 1  # the constraint is compiling: compute the prompt, sample once it is ready
        if seq.prompt_logprobs_left:
            # After a preemption, recompute what was delivered in chunks of its own so that no
            # chunk asks for prompt logprobs it already returned.
            done = len(seq.prompt_logprobs or ())
            if start < done < start + num_new:
                num_new = done - start
        return num_new

    def _reserve(
        self, seq: Sequence, num_new: int, scheduled: dict[int, ScheduledChunk], out: SchedulerOutput
    ) -> int | None:
        """Make room for ``num_new`` more tokens of a running sequence by preempting others; the
        tokens of chunks this unscheduled (priority policy), or None if ``seq`` itself had to go."""
        freed = 0
        while not self.blocks.grow(seq, seq.num_computed_tokens + num_new):
            if self._by_priority:  # vLLM: the highest (priority, arrival), scheduled or not
                victim = max(self.running, key=schedule_key)
            else:  # the most recently admitted not yet scheduled
                victim = next(s for s in reversed(self.running) if s.seq_id not in scheduled)
            chunk = scheduled.pop(victim.seq_id, None)
            if chunk is not None:
                out.chunks.remove(chunk)
                freed += chunk.num_new_tokens
            self._preempt(victim, out)
            if victim is seq:
                return None
        return freed

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
        self.waiting.add_front([seq])
        out.preempted.append(seq)

    def _may_use_cache(self, seq: Sequence) -> bool:
        # Prompt logprobs need every prompt position computed (as in vLLM), until delivered once.
        return not seq.prompt_logprobs_left

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
        """The backend's view of the step. Block tables, token lists and the token bitmask are
        the live ones: valid until ``update``."""
        items, constrained = [], []
        for chunk in out.chunks:
            seq = chunk.seq
            item = BatchItem(
                seq_id=seq.seq_id,
                token_ids=seq.token_ids(chunk.start_pos, chunk.end_pos),
                start_pos=chunk.start_pos,
                block_table=seq.block_table,
                sample=chunk.sample,
                params=seq.params,
                prompt_token_ids=seq.prompt_token_ids,
                output_token_ids=seq.output_token_ids,
                seed_offset=seq.index,
                want_prompt_logprobs=seq.wants_prompt_logprobs(chunk.start_pos, chunk.end_pos),
            )
            if chunk.sample and seq.constraint is not None:
                item.bitmask_row = len(constrained)
                constrained.append(seq)
            items.append(item)
        batch = Batch(items=items, block_size=self.config.block_size)
        if constrained:
            batch.token_bitmask, failures = self._bitmask.fill(constrained)
            self._failed.update(failures)
        return batch

    def update(self, out: SchedulerOutput, results: list[SampleResult]) -> list[Sequence]:
        """Apply a step's results: advance computed tokens, register full blocks in the prefix
        cache, append sampled tokens (telling constraints), apply stop rules, free finished
        sequences' blocks. Returns the sequences that got a token or finished, in batch order
        (pool-capped ones first)."""
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
            if result.prompt_logprobs is not None and seq.prompt_logprobs_left:
                seq.add_prompt_logprobs(chunk.start_pos, result.prompt_logprobs)
            if not chunk.sample:
                continue
            if result.token_id is None:
                raise ValueError(f"backend did not sample for seq {seq.seq_id}")
            error, terminated = self._failed.pop(seq.seq_id, None) or result.error, False
            if error is None and seq.constraint is not None:
                error, terminated = accept_token(seq, result.token_id)
            if error is not None:
                seq.error = error
                self.running.remove(seq)
                self._finish(seq, "abort")
                emitted.append(seq)
                continue
            self._append_token(seq, result)
            req = self.requests[seq.request_id]
            if req.pending and seq.index == 0:
                self._release_pending(req)
            reason = self._stop_reason(seq)
            if terminated and (reason is None or reason[0] == "length"):
                reason = ("stop", None)  # a complete grammar takes nothing more
            if reason is not None:
                self._finish(seq, *reason)
                any_finished = True
            emitted.append(seq)
        self._failed.clear()
        if any_finished:
            self.running = [s for s in self.running if s.status is RUNNING]
        return emitted

    def _append_token(self, seq: Sequence, result: SampleResult) -> None:
        token = result.token_id
        seq.output_token_ids.append(token)
        if seq.output_logprobs is not None:
            chosen = TokenLogprob(token, result.logprob, result.rank or 1)
            seq.output_logprobs.append((chosen, result.top_logprobs or []))

    def _stop_reason(self, seq: Sequence) -> tuple[str, int | None] | None:
        """(finish_reason, stop_reason) if the last sampled token ends the sequence."""
        params, token = seq.params, seq.output_token_ids[-1]
        if seq.num_output_tokens >= params.min_tokens:
            if not params.ignore_eos and token in self.eos_token_ids:
                return "stop", None
            if token in params.stop_token_ids:
                return "stop", token
        if params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens:
            return "length", None
        if seq.num_tokens >= self.config.max_model_len:
            return "length", None
        return None

    def _release_pending(self, req: Request) -> None:
        """Choice 0 has computed the prompt: queue the other choices first in line."""
        for sib in req.pending:
            sib.num_cached_tokens = req.seqs[0].num_cached_tokens
        self.waiting.add_front(req.pending)
        req.pending = []

    def _finish(self, seq: Sequence, finish_reason: str, stop_reason: int | str | None = None) -> None:
        """Mark finished and free blocks; the caller removes it from the running/waiting queue."""
        seq.status = FINISH_STATUS[finish_reason]
        seq.finish_reason = finish_reason
        seq.stop_reason = stop_reason
        seq.constraint = None  # its state (a grammar matcher) is not needed any more
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
