"""Request and sequence state, owned by the scheduler. Pure Python.

A request with ``params.n`` choices holds ``n`` sequences. They share the prompt list; each has its
own output tokens, block table and status. Token positions run over prompt + output: a sequence
preempted by recompute keeps its output tokens and recomputes them like a longer prompt.
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field

from llmserve.backends.base import TokenLogprob
from llmserve.engine.constraints import Constraint
from llmserve.engine.sampling import SamplingParams
from llmserve.errors import InvalidRequestError, LLMServeError

_seq_ids = itertools.count()  # next() on a count is atomic under the GIL

LogprobEntry = tuple[TokenLogprob, list[TokenLogprob]]


class SequenceStatus(enum.IntEnum):
    WAITING = 0  # in the waiting queue, or a choice waiting for the prompt to be computed once
    RUNNING = 1
    FINISHED_STOPPED = 2
    FINISHED_LENGTH = 3
    FINISHED_ABORTED = 4

    @property
    def finished(self) -> bool:
        return self >= SequenceStatus.FINISHED_STOPPED


FINISH_STATUS = {
    "stop": SequenceStatus.FINISHED_STOPPED,
    "length": SequenceStatus.FINISHED_LENGTH,
    "abort": SequenceStatus.FINISHED_ABORTED,
}


@dataclass(slots=True, eq=False)
class Sequence:
    """One choice of a request.

    ``num_computed_tokens`` tokens have their K/V in the cache (at the slots given by
    ``block_table``); the rest still need computing. While decoding exactly one token, the last
    sampled one, is uncomputed. ``block_hashes`` are the prefix-cache hashes of the full blocks of
    tokens (they depend only on token ids, so they survive preemption). ``constraint`` is this
    choice's own, made from ``params.constraint``; it also survives preemption.
    """

    seq_id: int
    request_id: str
    index: int
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    params: SamplingParams
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at first admission
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop token id (or stop string, set by the API side)
    arrival_time: float = field(default_factory=time.monotonic)
    priority: int = 0  # lower runs first under the "priority" scheduling policy
    num_preemptions: int = 0
    constraint: Constraint | None = field(default=None, repr=False)
    error: str | None = None  # why the sequence was aborted by the engine (a failed constraint)
    block_hashes: list[bytes] = field(default_factory=list, repr=False)
    num_registered_blocks: int = field(default=0, repr=False)  # full blocks already offered to the cache
    # Logprobs of prompt tokens 1..P-1, when params.prompt_logprobs is set (choice 0 only).
    prompt_logprobs: list[LogprobEntry] | None = field(default=None, repr=False)
    # One entry per output token, when params.logprobs is set.
    output_logprobs: list[LogprobEntry] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise InvalidRequestError("the prompt must contain at least one token", param="prompt")
        if not 0 <= self.index < self.params.n:
            raise ValueError(f"choice index {self.index} out of range for n={self.params.n}")
        if not 0 <= self.num_computed_tokens <= self.num_tokens:
            raise ValueError(f"num_computed_tokens={self.num_computed_tokens} outside [0, {self.num_tokens}]")
        if self.params.logprobs is not None and self.output_logprobs is None:
            self.output_logprobs = []

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_decode(self) -> bool:
        """Only the last sampled token is left to compute."""
        return bool(self.output_token_ids) and self.num_computed_tokens == self.num_tokens - 1

    @property
    def is_prefill(self) -> bool:
        return not self.is_decode

    @property
    def compiling(self) -> bool:
        """It must not sample yet: its constraint is still being compiled."""
        return self.constraint is not None and not self.output_token_ids and not self.constraint.is_ready()

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    def token_ids(self, start: int, end: int) -> list[int]:
        """Tokens at positions [start, end) of prompt + output."""
        p = len(self.prompt_token_ids)
        if end <= p:
            return self.prompt_token_ids[start:end]
        if start >= p:
            return self.output_token_ids[start - p : end - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - p]

    @property
    def prompt_logprobs_left(self) -> bool:
        """Prompt logprobs were asked for (choice 0 computes them) and not all delivered yet."""
        if self.params.prompt_logprobs is None or self.index != 0:
            return False
        return len(self.prompt_logprobs or ()) < self.num_prompt_tokens - 1

    def wants_prompt_logprobs(self, start: int, end: int) -> bool:
        """Whether computing positions [start, end) yields prompt logprobs not delivered yet."""
        if not self.prompt_logprobs_left:
            return False
        done = len(self.prompt_logprobs or ())
        return max(start, done) < min(end, self.num_prompt_tokens - 1)

    def add_prompt_logprobs(self, start: int, entries: list[LogprobEntry]) -> None:
        """Keep a chunk's prompt logprobs (positions start..), skipping those already delivered
        before a preemption."""
        if self.prompt_logprobs is None:
            self.prompt_logprobs = []
        done = len(self.prompt_logprobs)
        if start <= done:
            self.prompt_logprobs.extend(entries[done - start : self.num_prompt_tokens - 1 - start])

    def check_invariants(self, block_size: int) -> None:
        """Raise ValueError when the state is inconsistent (used by tests and debugging)."""
        if not 0 <= self.num_computed_tokens <= self.num_tokens:
            raise ValueError(f"seq {self.seq_id}: computed {self.num_computed_tokens} of {self.num_tokens}")
        if self.status is SequenceStatus.RUNNING:
            if len(self.block_table) * block_size < self.num_computed_tokens:
                raise ValueError(f"seq {self.seq_id}: block table too short for computed tokens")
        elif self.block_table:
            raise ValueError(f"seq {self.seq_id}: {self.status.name} but holds blocks")
        elif self.status is SequenceStatus.WAITING and self.num_computed_tokens:
            raise ValueError(f"seq {self.seq_id}: waiting with computed tokens")
        if self.is_finished != (self.finish_reason is not None):
            raise ValueError(
                f"seq {self.seq_id}: status {self.status.name} vs finish_reason {self.finish_reason}"
            )
        if self.params.max_tokens is not None and self.num_output_tokens > self.params.max_tokens:
            raise ValueError(f"seq {self.seq_id}: more output tokens than max_tokens")


@dataclass(slots=True, eq=False)
class Request:
    """A generation request: one prompt, ``params.n`` sequences (choices ``0..n-1``).

    ``pending`` holds the choices that wait for choice 0 to compute the prompt once; the scheduler
    then releases them and they share its full prompt blocks. Each choice gets its own constraint
    from ``params.constraint``; a spec that fails to make one rejects the request (400).
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence] = field(default_factory=list)
    arrival_time: float = field(default_factory=time.monotonic)
    pending: list[Sequence] = field(default_factory=list, repr=False)
    priority: int = 0

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise InvalidRequestError("the prompt must contain at least one token", param="prompt")
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise InvalidRequestError(f"priority must be an integer, got {self.priority!r}", param="priority")
        self.prompt_token_ids = list(self.prompt_token_ids)
        if not self.seqs:
            self.seqs = [
                Sequence(
                    seq_id=next(_seq_ids),
                    request_id=self.request_id,
                    index=i,
                    prompt_token_ids=self.prompt_token_ids,
                    output_token_ids=[],
                    params=self.params,
                    arrival_time=self.arrival_time,
                    priority=self.priority,
                    constraint=self._new_constraint(),
                )
                for i in range(self.params.n)
            ]
        if [s.index for s in self.seqs] != list(range(len(self.seqs))):
            raise ValueError("sequences must be given in choice order 0..n-1")

    def _new_constraint(self) -> Constraint | None:
        spec = self.params.constraint
        if spec is None:
            return None
        try:
            constraint = spec.new()
        except LLMServeError:
            raise
        except Exception as exc:  # a bad grammar is the request's fault, never the engine's
            raise InvalidRequestError(f"the output constraint failed to start: {exc}") from exc
        if not isinstance(constraint, Constraint):
            raise InvalidRequestError(
                f"{type(spec).__name__}.new() returned {type(constraint).__name__}, not a Constraint"
            )
        return constraint

    @classmethod
    def create(
        cls,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival_time: float | None = None,
        priority: int = 0,
    ) -> Request:
        """A request with ``params.n`` fresh sequences (each with its own constraint)."""
        if arrival_time is None:
            return cls(request_id, prompt_token_ids, params, priority=priority)
        return cls(request_id, prompt_token_ids, params, arrival_time=arrival_time, priority=priority)

    @property
    def is_finished(self) -> bool:
        return all(seq.is_finished for seq in self.seqs)

    @property
    def num_cached_tokens(self) -> int:
        return self.seqs[0].num_cached_tokens
