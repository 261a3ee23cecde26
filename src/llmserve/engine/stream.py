"""One request's output stream on the API side: engine events -> RequestOutputs.

Each choice owns its detokenizer. A choice ends in exactly one place, ``_ChoiceState.step``:
either the engine finished the sequence (EOS, stop token id, length, a finished grammar, abort)
or the detokenizer matched a stop string, in which case the engine is told to stop that sequence.
The stream hands out deltas, cumulative snapshots or only the final output (``OutputKind``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from llmserve.engine.constraint_steps import NO_TOKEN_FITS
from llmserve.engine.detokenizer import IncrementalDetokenizer
from llmserve.engine.engine import SeqEvent
from llmserve.engine.outputs import CompletionOutput, RequestOutput
from llmserve.engine.sampling import SamplingParams
from llmserve.errors import EngineDeadError, InvalidRequestError, LLMServeError, RequestTimeoutError

log = logging.getLogger("llmserve.engine")


class OutputKind(enum.Enum):
    """What each item of a GenerationStream holds."""

    DELTA = "delta"  # what is new since the previous item
    CUMULATIVE = "cumulative"  # every choice's whole output so far
    FINAL_ONLY = "final_only"  # one item, at the end, with every choice's whole output


@dataclass(slots=True)
class _ChoiceState:
    detok: IncrementalDetokenizer
    keep: bool  # accumulate (cumulative / final-only kinds)
    total: CompletionOutput
    finished: bool = False
    finish_reason: str | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    itl: list[float] = field(default_factory=list)

    def step(
        self, event: SeqEvent, params: SamplingParams, now: float, stop_seq: Callable[[int], None]
    ) -> CompletionOutput | None:
        """Apply one engine event; the returned delta is None when nothing changed."""
        out = CompletionOutput(index=event.index, num_output_tokens=event.num_output_tokens)
        if event.token_id is not None:
            self._record_token(now)
            out.token_ids.append(event.token_id)
            if event.logprobs is not None:
                out.logprobs = [event.logprobs]
            hidden = isinstance(event.stop_reason, int) and not params.include_stop_str_in_output
            if not hidden:
                out.text = self.detok.add([event.token_id])
        if self.detok.stopped and event.finish_reason is None:
            out.finish_reason, out.stop_reason = "stop", self.detok.stop_reason
            stop_seq(event.index)  # the engine still runs it: free its blocks now
        elif event.finish_reason is not None:
            out.finish_reason, out.stop_reason = event.finish_reason, event.stop_reason
            if event.finish_reason != "abort" and not self.detok.stopped:
                out.text += self.detok.finish()
        self.finished = out.finish_reason is not None
        self.finish_reason = out.finish_reason
        if not (out.token_ids or out.text or out.finish_reason):
            return None
        if self.keep:
            _merge(self.total, out)
        return out

    def _record_token(self, now: float) -> None:
        if self.first_token_time is None:
            self.first_token_time = now
        elif self.last_token_time is not None:
            self.itl.append(now - self.last_token_time)
        self.last_token_time = now


class GenerationStream:
    """The outputs of one engine request, as an async iterator of RequestOutput.

    Created by ``AsyncEngine.add_request`` once the request passed every check, so errors a
    client can fix are raised before a stream exists. Closing the stream before the request
    finished (``aclose``, a dropped client, a cancelled task) aborts it and frees its KV blocks.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        tokenizer,
        kind: OutputKind,
        on_stop_seq: Callable[[str, int], None],
        on_close: Callable[[GenerationStream], None],
        metrics=None,
        deadline: float | None = None,
        stream_interval: int = 1,
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.kind = kind
        self.arrival = time.monotonic()
        self.scheduled_time: float | None = None
        self.num_cached_tokens = 0
        self.prompt_logprobs: list | None = None
        self._queue: asyncio.Queue = asyncio.Queue()
        self._first = True
        self._closed = False
        self._on_stop_seq = on_stop_seq
        self._on_close = on_close
        self.metrics = metrics
        self.deadline = deadline  # time.monotonic() past which the request is aborted (504)
        self.stream_interval = stream_interval  # DELTA: tokens per item, at least
        self._held: dict[int, CompletionOutput] = {}  # DELTA deltas not handed out yet
        self._counted_prompt = False
        self._reported = False  # the end went to the metrics
        self._generated = 0
        keep = kind is not OutputKind.DELTA
        self.choices = [
            _ChoiceState(
                IncrementalDetokenizer(tokenizer, prompt_token_ids, params), keep, CompletionOutput(i)
            )
            for i in range(params.n)
        ]

    @property
    def finished(self) -> bool:
        return all(choice.finished for choice in self.choices)

    @property
    def num_generated_tokens(self) -> int:
        return self._generated

    @property
    def first_token_time(self) -> float | None:
        times = [c.first_token_time for c in self.choices if c.first_token_time is not None]
        return min(times) if times else None

    # --- fed by the engine (event loop thread) ---------------------------------------------------

    def put(self, item: list[SeqEvent] | BaseException) -> None:
        """Queue one step's events for this request, or the error that ended it (engine side)."""
        self._queue.put_nowait(item)

    # --- consumed by a protocol -------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[RequestOutput]:
        try:
            while not self.finished:
                item = await self._next_item()
                if isinstance(item, LLMServeError):
                    self._mark_done()  # the engine dropped it: nothing to abort
                    raise item
                if isinstance(item, BaseException):
                    self._mark_done()
                    raise EngineDeadError(f"The engine stopped after an error: {item}")
                output = self._process(item)
                if output is not None:
                    yield output
        finally:
            await self.aclose()

    async def _next_item(self):
        if self.deadline is None:
            return await self._queue.get()
        try:
            return await asyncio.wait_for(self._queue.get(), max(self.deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:
            raise RequestTimeoutError(
                "The request ran past its time budget (--timeout or the request's timeout) and was aborted."
            ) from None

    async def result(self) -> RequestOutput:
        """Run to the end and return the final output with every choice's whole text."""
        if self.kind is OutputKind.DELTA:
            raise ValueError("result() needs a stream of kind CUMULATIVE or FINAL_ONLY")
        last = None
        async for output in self:
            last = output
        if last is None:
            raise EngineDeadError("the request produced no output")
        return last

    async def ready(self) -> None:
        """Wait for the request's output constraint (a grammar compiling while the prompt is
        computed); if it fails, the request is aborted and the error (a 400) raised. Protocols
        await it before answering, so that a stream does not start with an error."""
        spec = self.params.constraint
        if spec is None:
            return
        try:
            await spec.ready()
        except BaseException:
            self.close()  # aborts it in the engine, blocks freed
            raise

    def close(self) -> None:
        """Stop consuming; an unfinished request is aborted and its blocks freed."""
        if not self._closed:
            self._closed = True
            if not self.finished:  # the client went away: counted as an abort, as vLLM does
                self._report("abort", time.monotonic())
            self._on_close(self)

    async def aclose(self) -> None:
        """``close`` for ``async with``-style callers and ``merge_streams``."""
        self.close()

    def _mark_done(self) -> None:
        for choice in self.choices:
            choice.finished = True

    # --- events -> outputs ------------------------------------------------------------------------

    def _process(self, events: list[SeqEvent]) -> RequestOutput | None:
        now = time.monotonic()
        deltas = []
        for event in events:
            choice = self.choices[event.index]
            if choice.finished:
                continue
            self.num_cached_tokens = max(self.num_cached_tokens, event.num_cached_tokens)
            if self.scheduled_time is None and event.scheduled_time is not None:
                self.scheduled_time = event.scheduled_time
            if event.prompt_logprobs is not None:
                self.prompt_logprobs = [None, *event.prompt_logprobs]
            if event.error is not None:  # the engine ended this choice (a failed constraint)
                self._mark_done()
                if event.error.startswith(NO_TOKEN_FITS):  # what the request asked for cannot be met
                    raise InvalidRequestError(f"Generation failed: {event.error}", param="structured_outputs")
                raise LLMServeError(f"Generation failed: {event.error}")
            delta = choice.step(event, self.params, now, self._stop_seq)
            if delta is not None:
                self._generated += len(delta.token_ids)
                deltas.append(delta)
        self._count(deltas, now)
        return self._output(deltas)

    def _stop_seq(self, index: int) -> None:
        self._on_stop_seq(self.request_id, index)

    def _output(self, deltas: list[CompletionOutput]) -> RequestOutput | None:
        finished = self.finished
        if self.kind is OutputKind.FINAL_ONLY and not finished:
            return None
        if self.kind is OutputKind.DELTA:
            outputs = self._release(deltas, finished)
            if outputs is None:
                return None
        else:
            if not deltas and not finished:
                return None
            outputs = [_copy(choice.total) for choice in self.choices]
        output = RequestOutput(self.request_id, self.prompt_token_ids, outputs, finished=finished)
        if self._first or self.kind is not OutputKind.DELTA:
            output.prompt_logprobs = self.prompt_logprobs
            output.num_cached_tokens = self.num_cached_tokens
        self._first = False
        return output

    def _release(self, deltas: list[CompletionOutput], finished: bool) -> list[CompletionOutput] | None:
        """DELTA: what to hand out now; deltas wait until ``stream_interval`` tokens gathered."""
        if self.stream_interval <= 1 and not self._held:
            return deltas if deltas or self._first else None
        for delta in deltas:
            held = self._held.get(delta.index)
            self._held[delta.index] = delta if held is None else _merge(held, delta)
        ready = finished or self._first or any(d.finished for d in self._held.values())
        ready = ready or sum(len(d.token_ids) for d in self._held.values()) >= self.stream_interval
        if not ready:
            return None
        outputs, self._held = list(self._held.values()), {}
        return outputs if outputs or self._first else None

    def _count(self, deltas: list[CompletionOutput], now: float) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        new_tokens = sum(len(d.token_ids) for d in deltas)
        if new_tokens and not self._counted_prompt:
            self._counted_prompt = True
            metrics.on_prompt_tokens(len(self.prompt_token_ids))
        metrics.on_generation_tokens(new_tokens)
        if self.finished:
            self._report(self.choices[0].finish_reason or "abort", now)

    def _report(self, finish_reason: str, now: float) -> None:
        """The request's end, once, to the metrics."""
        metrics = self.metrics
        if metrics is None or self._reported:
            return
        self._reported = True
        first = [c.first_token_time for c in self.choices if c.first_token_time is not None]
        scheduled = self.scheduled_time or self.arrival
        try:
            metrics.on_request_finished(
                finish_reason=finish_reason,
                prompt_tokens=len(self.prompt_token_ids),
                generation_tokens=self._generated,
                ttft_s=(min(first) - self.arrival) if first else None,
                e2e_s=now - self.arrival,
                itl_s=[x for c in self.choices for x in c.itl],
                queue_s=max(scheduled - self.arrival, 0.0),
            )
        except Exception:  # metrics must never break a request
            log.exception("metrics update failed")


def _merge(held: CompletionOutput, new: CompletionOutput) -> CompletionOutput:
    held.text += new.text
    held.token_ids.extend(new.token_ids)
    if new.logprobs:
        held.logprobs = (held.logprobs or []) + new.logprobs
    held.finish_reason, held.stop_reason = new.finish_reason, new.stop_reason
    held.num_output_tokens = new.num_output_tokens
    return held


def _copy(out: CompletionOutput) -> CompletionOutput:
    return CompletionOutput(
        out.index,
        out.text,
        list(out.token_ids),
        list(out.logprobs) if out.logprobs is not None else None,
        out.finish_reason,
        out.stop_reason,
        out.num_output_tokens,
    )
