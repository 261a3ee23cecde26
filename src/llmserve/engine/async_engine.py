"""The async front: per-request output streams over an engine stepping in its own thread.

The engine steps on the device thread (engine/device_thread.py), never on the event loop, so HTTP
handling cannot stall decoding. Commands (add, abort) go to that thread as jobs, run between
steps; each step's events come back in one ``call_soon_threadsafe``. Detokenization and stop strings are handled here, on the API side.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from llmserve.engine.detokenizer import IncrementalDetokenizer
from llmserve.engine.device_thread import device_thread
from llmserve.engine.engine import EngineStats, LLMEngine, SeqEvent
from llmserve.engine.outputs import CompletionOutput, RequestOutput
from llmserve.engine.sampling import SamplingParams
from llmserve.errors import EngineDeadError, LLMServeError, OverloadedError

log = logging.getLogger("llmserve.engine")

GENERATION_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def load_generation_defaults(model_dir: str, setting: str) -> dict:
    """Sampling defaults from generation_config.json ('auto'), none ('vllm'), or another folder."""
    if setting == "vllm":
        return {}
    path = Path(model_dir if setting == "auto" else setting) / "generation_config.json"
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    defaults = {key: raw[key] for key in GENERATION_DEFAULT_KEYS if raw.get(key) is not None}
    if raw.get("max_new_tokens"):
        defaults["max_tokens"] = raw["max_new_tokens"]
    return defaults


@dataclass
class _Choice:
    detok: IncrementalDetokenizer
    finished: bool = False
    first_token_time: float | None = None
    last_token_time: float | None = None
    itl: list[float] = field(default_factory=list)
    num_tokens: int = 0
    finish_reason: str | None = None


@dataclass
class _Stream:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    choices: list[_Choice]
    arrival: float
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    first_output: bool = True
    scheduled_time: float | None = None

    @property
    def finished(self) -> bool:
        return all(choice.finished for choice in self.choices)


class AsyncEngine:
    """Streams RequestOutputs per request; see ENGINE_API in the docs of llmserve.state."""

    def __init__(
        self, engine: LLMEngine, tokenizer, config, generation_defaults: dict, model_name: str
    ) -> None:
        self.engine = engine
        self.backend = engine.backend
        self.tokenizer = tokenizer
        self.config = config
        self.model_info = engine.model_info
        self.max_model_len = engine.max_model_len
        self.num_blocks = engine.num_blocks
        self.kv_capacity_tokens = engine.kv_capacity_tokens
        self.generation_defaults = generation_defaults
        self.metrics = _make_metrics(model_name, engine.max_model_len, self.stats)
        self.is_sleeping = False
        self.error: BaseException | None = None
        self._streams: dict[str, _Stream] = {}
        self._device = device_thread()
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats = engine.stats()

    @classmethod
    def create(cls, config, backend, model_dir: str, model_name: str) -> AsyncEngine:
        from transformers import AutoTokenizer

        engine = device_thread().run(LLMEngine, backend, model_dir, config)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        return cls(
            engine,
            tokenizer,
            config,
            load_generation_defaults(model_dir, config.generation_config),
            model_name,
        )

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        self._running = True
        await asyncio.wrap_future(self._device.add_stepper(self))

    async def stop(self) -> None:
        if self._running:
            self._running = False
            await asyncio.wrap_future(self._device.remove_stepper(self))

    async def sleep(self, level: int = 1) -> None:
        self.is_sleeping = True

    async def wake_up(self) -> None:
        self.is_sleeping = False

    @property
    def is_dead(self) -> bool:
        return self.error is not None

    # --- requests ------------------------------------------------------------------------------

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.engine.validate(prompt_token_ids, params)

    def stats(self) -> EngineStats:
        return self._stats

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        """Add a request and yield its outputs (deltas) until every choice finished."""
        if self.error is not None:
            raise EngineDeadError(f"The engine stopped after an error: {self.error}")
        if self.is_sleeping:
            raise OverloadedError("The engine is sleeping; POST /wake_up first.")
        self.validate(prompt_token_ids, params)
        if len(self._streams) >= self.config.max_num_seqs + self.config.max_waiting_requests:
            raise OverloadedError("Too many requests in flight; try again later.")
        if request_id in self._streams:
            raise LLMServeError(f"request id {request_id} is already in use")
        choices = [
            _Choice(IncrementalDetokenizer(self.tokenizer, prompt_token_ids, params)) for _ in range(params.n)
        ]
        stream = _Stream(request_id, list(prompt_token_ids), params, choices, time.monotonic())
        self._streams[request_id] = stream
        self._send(("add", request_id, list(prompt_token_ids), params))
        try:
            while not stream.finished:
                item = await stream.queue.get()
                if isinstance(item, LLMServeError):
                    stream.choices = []  # nothing runs any more: do not abort on the way out
                    raise item
                if isinstance(item, BaseException):
                    raise EngineDeadError(f"The engine stopped after an error: {item}")
                output = self._process(stream, item)
                if output is not None:
                    yield output
        finally:
            self._streams.pop(request_id, None)
            if not stream.finished:  # consumer went away (disconnect, cancel): free the blocks now
                self._send(("abort", request_id, "abort"))

    async def abort(self, request_id: str) -> None:
        self._send(("abort", request_id, "abort"))

    def _send(self, command: tuple) -> None:
        self._device.submit(self._apply, command)

    # --- API side: events -> outputs -----------------------------------------------------------

    def _process(self, stream: _Stream, events: list[SeqEvent]) -> RequestOutput | None:
        now = time.monotonic()
        outputs = []
        prompt_logprobs = None
        num_cached = 0
        for event in events:
            choice = stream.choices[event.index]
            if choice.finished:
                continue
            num_cached = max(num_cached, event.num_cached_tokens)
            if stream.scheduled_time is None and event.scheduled_time is not None:
                stream.scheduled_time = event.scheduled_time
            if event.prompt_logprobs is not None:
                prompt_logprobs = [None, *event.prompt_logprobs]
            out = CompletionOutput(index=event.index, num_output_tokens=event.num_output_tokens)
            if event.token_id is not None:
                self._record_token(choice, now)
                out.token_ids.append(event.token_id)
                if event.logprobs is not None:
                    out.logprobs = [event.logprobs]
                hide = isinstance(event.stop_reason, int) and not stream.params.include_stop_str_in_output
                if not hide:
                    out.text = choice.detok.add([event.token_id])
            if choice.detok.stopped and event.finish_reason is None:
                out.finish_reason, out.stop_reason = "stop", choice.detok.stop_reason
                self._send(("abort_seq", stream.request_id, event.index))
            elif event.finish_reason is not None:
                out.finish_reason, out.stop_reason = event.finish_reason, event.stop_reason
                if event.finish_reason != "abort" and not choice.detok.stopped:
                    out.text += choice.detok.finish()
            if out.finish_reason is not None:
                choice.finished = True
                choice.finish_reason = out.finish_reason
            if out.token_ids or out.text or out.finish_reason:
                outputs.append(out)
        if self.metrics is not None:
            new_tokens = sum(len(out.token_ids) for out in outputs)
            if stream.first_output and new_tokens:
                self.metrics.on_prompt_tokens(len(stream.prompt_token_ids))
            self.metrics.on_generation_tokens(new_tokens)
        if not outputs and not stream.first_output:
            return None
        output = RequestOutput(stream.request_id, stream.prompt_token_ids, outputs, finished=stream.finished)
        if stream.first_output:
            output.prompt_logprobs = prompt_logprobs
            output.num_cached_tokens = num_cached
            stream.first_output = False
        if output.finished:
            self._report(stream, now)
        return output

    @staticmethod
    def _record_token(choice: _Choice, now: float) -> None:
        if choice.first_token_time is None:
            choice.first_token_time = now
        elif choice.last_token_time is not None:
            choice.itl.append(now - choice.last_token_time)
        choice.last_token_time = now
        choice.num_tokens += 1

    def _report(self, stream: _Stream, now: float) -> None:
        if self.metrics is None:
            return
        first = [c.first_token_time for c in stream.choices if c.first_token_time is not None]
        scheduled = stream.scheduled_time or stream.arrival
        try:
            self.metrics.on_request_finished(
                finish_reason=stream.choices[0].finish_reason or "abort",
                prompt_tokens=len(stream.prompt_token_ids),
                generation_tokens=sum(c.num_tokens for c in stream.choices),
                ttft_s=(min(first) - stream.arrival) if first else None,
                e2e_s=now - stream.arrival,
                itl_s=[x for c in stream.choices for x in c.itl],
                queue_s=max(scheduled - stream.arrival, 0.0),
            )
        except Exception:  # metrics must never break a request
            log.exception("metrics update failed")

    # --- step thread ---------------------------------------------------------------------------

    # --- device thread: commands and steps ---------------------------------------------------

    def has_work(self) -> bool:
        return self.error is None and self.engine.has_work()

    def step_once(self) -> None:
        try:
            events = self.engine.step()
        except BaseException as exc:  # the engine is dead: tell every waiting stream
            log.exception("engine step failed")
            self.error = exc
            self._loop.call_soon_threadsafe(self._fail_all, exc)
            return
        self._stats = self.engine.stats()
        if events:
            self._loop.call_soon_threadsafe(self._dispatch, events)

    def _apply(self, command: tuple) -> None:
        kind, request_id = command[0], command[1]
        engine = self.engine
        if kind == "add":
            if request_id in self._streams:
                try:
                    engine.add_request(request_id, command[2], command[3])
                except LLMServeError as exc:  # e.g. a request the scheduler can never fit
                    self._loop.call_soon_threadsafe(self._fail_one, request_id, exc)
        elif kind == "abort":
            engine.abort(request_id, command[2])
        elif kind == "abort_seq":
            engine.scheduler.abort_request(request_id, "stop", index=command[2])
        self._stats = engine.stats()

    def _dispatch(self, events: list[SeqEvent]) -> None:
        by_request: dict[str, list[SeqEvent]] = {}
        for event in events:
            by_request.setdefault(event.request_id, []).append(event)
        for request_id, group in by_request.items():
            stream = self._streams.get(request_id)
            if stream is not None:
                stream.queue.put_nowait(group)

    def _fail_one(self, request_id: str, exc: BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.queue.put_nowait(exc)

    def _fail_all(self, exc: BaseException) -> None:
        for stream in self._streams.values():
            stream.queue.put_nowait(exc)


def _make_metrics(model_name: str, max_model_len: int, stats_fn):
    from llmserve.engine.metrics import EngineMetrics

    return EngineMetrics(model_name, max_model_len=max_model_len, stats_fn=stats_fn)
