"""The synchronous engine core: schedule -> execute -> postprocess, one step at a time.

Every method runs on the engine's step thread (the one that steps), between steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass

from llmserve.backends.base import Backend, ModelInfo, SampleResult, TokenLogprob
from llmserve.engine.constraints import LogitsProcessor
from llmserve.engine.kv_cache import BlockManager
from llmserve.engine.request import Request, Sequence, SequenceStatus
from llmserve.engine.sampling import SamplingParams
from llmserve.engine.scheduler import Scheduler, SchedulerConfig
from llmserve.errors import ConfigError, InvalidRequestError, OverloadedError

log = logging.getLogger("llmserve.engine")


@dataclass(slots=True)
class SeqEvent:
    """What happened to one sequence in one step (sent from the step thread to the API side)."""

    request_id: str
    index: int
    token_id: int | None
    logprobs: tuple[TokenLogprob, list[TokenLogprob]] | None
    finish_reason: str | None
    stop_reason: int | str | None
    num_output_tokens: int
    num_cached_tokens: int
    prompt_logprobs: list[tuple[TokenLogprob, list[TokenLogprob]]] | None = None
    scheduled_time: float | None = None  # when the request was first scheduled (queue time ends)
    error: str | None = None  # with finish_reason "abort": the engine ended it (a failed constraint)


@dataclass(slots=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_free_blocks: int
    num_total_blocks: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_cached_blocks: int = 0
    num_steps: int = 0


class LLMEngine:
    """Owns the scheduler and the KV block pool; the backend owns the math.

    ``scheduling_policy`` ("fcfs" or "priority") defaults to the config's; ``logits_processors``
    are LogitsProcessor objects made once for this engine and applied to every step.
    """

    def __init__(
        self,
        backend: Backend,
        model_dir: str,
        config,
        *,
        scheduling_policy: str | None = None,
        logits_processors: Seq[LogitsProcessor] | None = None,
    ) -> None:
        self.backend = backend
        self.config = config
        self.model_dir = model_dir
        if scheduling_policy is None:
            scheduling_policy = getattr(config, "scheduling_policy", None) or "fcfs"
        self.logits_processors = list(logits_processors or ())
        for proc in self.logits_processors:
            if not isinstance(proc, LogitsProcessor):
                raise ConfigError(
                    f"logits processors must be LogitsProcessor objects, got {type(proc).__name__}"
                )
        info: ModelInfo = backend.load_model(model_dir)
        self.model_info = info
        if self.logits_processors:
            backend.set_logits_processors(self.logits_processors)
        if config.max_model_len and config.max_model_len > info.max_model_len:
            raise ConfigError(
                f"--max-model-len {config.max_model_len} exceeds the model's context length {info.max_model_len}"
            )
        self.max_model_len = config.max_model_len or info.max_model_len
        block_size = config.block_size
        per_block = info.kv_bytes_per_token() * block_size
        budget = backend.kv_cache_budget_bytes(info)
        self.num_blocks = budget // per_block
        needed = -(-self.max_model_len // block_size)
        if self.num_blocks < needed:
            raise ConfigError(
                f"KV cache budget of {budget / 2**30:.2f} GiB holds {self.num_blocks * block_size} tokens, "
                f"less than --max-model-len {self.max_model_len}; raise the budget or lower --max-model-len"
            )
        backend.allocate_kv_cache(self.num_blocks, block_size)
        self.blocks = BlockManager(self.num_blocks, block_size, config.enable_prefix_caching)
        sched_config = SchedulerConfig(
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=max(config.max_num_batched_tokens, 1),
            max_model_len=self.max_model_len,
            block_size=block_size,
            vocab_size=info.vocab_size,
            scheduling_policy=scheduling_policy,
        )
        self.scheduler = Scheduler(sched_config, self.blocks, info.eos_token_ids)
        self._scheduled: dict[str, float] = {}  # request id -> first scheduled (monotonic)
        self.sleep_level = 0  # 0: awake
        self.num_steps = 0

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_blocks * self.config.block_size

    def validate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        priority: int = 0,
        prompt_param: str = "prompt",
    ) -> None:
        """Reject what can never run, with a message naming the numbers; ``prompt_param`` is the
        request field the prompt came from (``messages`` for chat, ``input`` for Responses)."""
        validate_request(
            prompt_token_ids, params, priority, policy=self.scheduler.config.scheduling_policy,
            vocab_size=self.model_info.vocab_size, max_model_len=self.max_model_len, config=self.config,
            prompt_param=prompt_param,
        )  # fmt: skip

    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, priority: int = 0
    ) -> None:
        """Queue a request. ``priority`` (lower first) needs the "priority" scheduling policy.
        Raises InvalidRequestError for what can never run (a constraint that fails to start
        included), OverloadedError while sleeping."""
        if self.sleep_level:
            raise OverloadedError("The engine is sleeping; wake it up first.")
        if params.max_tokens is None:
            params.max_tokens = self.max_model_len - len(prompt_token_ids)
        request = Request.create(request_id, list(prompt_token_ids), params, priority=priority)
        self.scheduler.add_request(request)

    def abort(self, request_id: str, finish_reason: str = "abort") -> list[Sequence]:
        """Finish a request now and free its blocks; the sequences it finished ([] if unknown)."""
        self._scheduled.pop(request_id, None)
        return self.scheduler.abort_request(request_id, finish_reason)

    def has_work(self) -> bool:
        return self.scheduler.has_unfinished()

    # -- sleep mode ---------------------------------------------------------------------------

    @property
    def is_sleeping(self) -> bool:
        return self.sleep_level > 0

    def sleep(self, level: int = 1) -> None:
        """Free device memory while idle (vLLM's sleep mode): level 1 the KV cache, level 2 the
        weights too. Only with no request in the engine (InvalidRequestError naming how many
        there are). Sleeping again at a deeper level frees the weights as well; otherwise a
        repeated call does nothing. Requests are refused until ``wake_up``."""
        if level not in (1, 2):
            raise InvalidRequestError(f"sleep level must be 1 or 2, got {level!r}", param="level")
        if level <= self.sleep_level:
            return
        if self.scheduler.has_unfinished():
            s = self.scheduler
            raise InvalidRequestError(
                f"cannot sleep with {s.num_running} running and {s.num_waiting} waiting sequences; "
                "let them finish or abort them first"
            )
        self.backend.sleep(level)
        self.blocks.reset_prefix_cache()  # the cached contents are gone with the KV tensors
        self.sleep_level = level
        log.info("engine asleep (level %d)", level)

    def wake_up(self) -> None:
        """Reallocate the KV cache (same number of blocks, empty) and, after level 2, reload the
        weights from the model directory. Does nothing when awake."""
        if not self.sleep_level:
            return
        self.backend.wake_up()
        self.sleep_level = 0
        log.info("engine awake")

    def reset_prefix_cache(self) -> int:
        """Forget cached prefixes that no running sequence holds; how many blocks were dropped."""
        return self.blocks.reset_prefix_cache()

    # -- stepping -----------------------------------------------------------------------------

    def step(self) -> list[SeqEvent]:
        """Run one step; return an event for every sequence that produced a token or finished."""
        if self.sleep_level:
            return []
        out = self.scheduler.schedule()
        if out.is_empty:
            return []
        self.num_steps += 1
        now = time.monotonic()
        for chunk in out.chunks:
            self._scheduled.setdefault(chunk.seq.request_id, now)
        results = self.backend.execute(self.scheduler.make_batch(out)) if out.chunks else []
        by_seq = {res.seq_id: res for res in results}
        return [self._event(seq, by_seq.get(seq.seq_id)) for seq in self.scheduler.update(out, results)]

    def _event(self, seq: Sequence, res: SampleResult | None) -> SeqEvent:
        # A token its constraint rejected (or a failed row's) was not appended: do not report it.
        token = res.token_id if res is not None and seq.error is None else None
        logprobs = seq.output_logprobs[-1] if token is not None and seq.output_logprobs else None
        first = token is not None and len(seq.output_token_ids) == 1
        prompt_lp = seq.prompt_logprobs if first and seq.index == 0 else None
        scheduled = self._scheduled.get(seq.request_id)
        if seq.finish_reason is not None and self.scheduler.requests.get(seq.request_id) is None:
            self._scheduled.pop(seq.request_id, None)
        return SeqEvent(
            seq.request_id, seq.index, token, logprobs, seq.finish_reason, seq.stop_reason,
            len(seq.output_token_ids), seq.num_cached_tokens, prompt_lp, scheduled, seq.error,
        )  # fmt: skip

    def stats(self) -> EngineStats:
        blocks = self.blocks
        return EngineStats(
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            num_free_blocks=blocks.num_free_blocks,
            num_total_blocks=self.num_blocks,
            kv_cache_usage=blocks.usage,
            prefix_cache_queries=blocks.prefix_cache_queries,
            prefix_cache_hits=blocks.prefix_cache_hits,
            num_cached_blocks=blocks.num_cached_blocks,
            num_steps=self.num_steps,
        )

    def request_phases(self) -> dict[str, tuple[str, int]]:
        """request id -> (phase, prompt tokens computed) for /v1/status: "queued" while no
        sequence runs, "prefill" while the prompt is computed, else "generation"."""
        phases = {}
        for request_id, req in self.scheduler.requests.items():
            running = [s for s in req.seqs if s.status is SequenceStatus.RUNNING]
            if not running:
                phases[request_id] = ("queued", 0)
                continue
            seq = running[0]
            computed = min(seq.num_computed_tokens, seq.num_prompt_tokens)
            phases[request_id] = ("prefill" if computed < seq.num_prompt_tokens else "generation", computed)
        return phases


def validate_request(
    prompt_token_ids: list[int], params: SamplingParams, priority: int, *, policy: str, vocab_size: int,
    max_model_len: int, config, prompt_param: str = "prompt",
) -> None:  # fmt: skip
    """Reject what can never run on an engine of this policy, vocabulary and context length, with
    a message naming the numbers (the API process checks with it before sending a request).
    ``prompt_param`` is the request field the prompt came from."""
    if priority != 0 and policy != "priority":
        raise InvalidRequestError(
            f"priority {priority} needs the 'priority' scheduling policy (this engine is {policy!r})",
            param="priority",
        )
    if not prompt_token_ids:
        raise InvalidRequestError(
            f"The prompt ({prompt_param}) is empty; at least one token is required.", param=prompt_param
        )
    vocab = vocab_size
    bad = next((t for t in prompt_token_ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise InvalidRequestError(
            f"{prompt_param}: token id {bad} is out of vocabulary (size {vocab}).", param=prompt_param
        )
    params.check_vocab(vocab)
    params.check_limits(config)
    prompt_len = len(prompt_token_ids)
    max_tokens = params.max_tokens or 0
    if prompt_len + max_tokens > max_model_len or prompt_len >= max_model_len:
        raise InvalidRequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_len + max_tokens} tokens ({prompt_len} in the {prompt_param}, {max_tokens} in the "
            f"completion). Please reduce the length of the {prompt_param} or completion.",
            param="max_tokens" if max_tokens and prompt_len < max_model_len else prompt_param,
        )
