"""The async front: requests in, GenerationStreams out, over an engine stepping on the device thread.

The engine steps on the device thread (engine/device_thread.py), never on the event loop, so HTTP
handling cannot stall decoding. Typed commands (engine/commands.py) go to that thread as jobs run
between steps; each step's events come back in one ``call_soon_threadsafe``. Detokenization and
stop strings happen on the API side, in each request's GenerationStream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

from llmserve.engine.commands import AbortRequest, AddRequest, Command, StopSequence
from llmserve.engine.device_thread import device_thread
from llmserve.engine.engine import EngineStats, LLMEngine, SeqEvent
from llmserve.engine.sampling import SamplingParams
from llmserve.engine.stream import GenerationStream, OutputKind
from llmserve.errors import EngineDeadError, InvalidRequestError, LLMServeError, OverloadedError
from llmserve.sources.tokenizer import load_tokenizer

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


class AsyncEngine:
    """Adds requests to an LLMEngine and streams their outputs.

    ``add_request`` checks everything a client can get wrong and returns a GenerationStream at
    once; nothing about a request fails later except the engine itself.
    """

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
        self.error: BaseException | None = None
        self._streams: dict[str, GenerationStream] = {}
        self._device = device_thread()
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats = engine.stats()
        self.totals = Totals()
        self.started = time.time()

    @property
    def streams(self) -> list[GenerationStream]:
        """The requests in flight, oldest first."""
        return list(self._streams.values())

    async def request_phases(self) -> dict[str, tuple[str, int]]:
        """The engine's view of each request (queued / prefill / generation), asked between steps."""
        return await asyncio.wrap_future(self._device.submit(self.engine.request_phases))

    @classmethod
    def create(cls, config, backend, model_dir: str, model_name: str, **engine_kwargs) -> AsyncEngine:
        loading = device_thread().submit(LLMEngine, backend, model_dir, config, **engine_kwargs)
        try:  # the tokenizer (transformers' imports, 2 s) loads while the device thread loads weights
            tokenizer = load_tokenizer(model_dir)
        finally:
            engine = loading.result()
        defaults = load_generation_defaults(model_dir, config.generation_config)
        return cls(engine, tokenizer, config, defaults, model_name)

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
        """Free the KV cache (level 1) and the weights too (level 2) until ``wake_up``."""
        await asyncio.wrap_future(self._device.submit(self.engine.sleep, level))

    async def wake_up(self) -> None:
        """Restore what ``sleep`` freed."""
        await asyncio.wrap_future(self._device.submit(self.engine.wake_up))

    @property
    def is_sleeping(self) -> bool:
        return self.engine.is_sleeping

    @property
    def is_dead(self) -> bool:
        if self.error is None and (failure := self.backend.failure()) is not None:
            self.error = RuntimeError(failure)  # a lost worker: nothing can run any more
            log.error("engine dead: %s", failure)
            if self._loop is not None:
                self._loop.call_soon_threadsafe(
                    self._fail_all, EngineDeadError(f"The engine stopped: {failure}")
                )
        return self.error is not None

    # --- requests ------------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        return self._stats

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        kind: OutputKind = OutputKind.DELTA,
        priority: int = 0,
        deadline: float | None = None,
        stream_interval: int = 1,
        prompt_param: str = "prompt",
    ) -> GenerationStream:
        """Check the request and queue it; raises a 4xx/503 LLMServeError, or returns its stream."""
        self.check(prompt_token_ids, params, priority, prompt_param)
        if request_id in self._streams:
            raise InvalidRequestError(f"request id {request_id} is already in use", param="request_id")
        prompt = list(prompt_token_ids)
        stream = GenerationStream(
            request_id, prompt, params, self.tokenizer, kind, self._stop_seq, self._closed, self.metrics,
            deadline=deadline, stream_interval=stream_interval,
        )  # fmt: skip
        self._streams[request_id] = stream
        self._send(AddRequest(request_id, prompt, params, priority))
        return stream

    def check(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        priority: int = 0,
        prompt_param: str = "prompt",
    ) -> None:
        """Every check ``add_request`` makes, without queuing anything (render routes use it);
        errors about the prompt name ``prompt_param``."""
        if self.is_dead:
            raise EngineDeadError(f"The engine stopped after an error: {self.error}")
        if self.is_sleeping:
            raise OverloadedError("The engine is sleeping; POST /wake_up first.")
        self._validate(prompt_token_ids, params, priority, prompt_param)
        if len(self._streams) >= self.config.max_num_seqs + self.config.max_waiting_requests:
            raise OverloadedError("Too many requests in flight; try again later.")

    def _validate(
        self, prompt_token_ids: list[int], params: SamplingParams, priority: int, prompt_param: str
    ) -> None:
        self.engine.validate(prompt_token_ids, params, priority, prompt_param)

    async def abort(self, request_id: str) -> None:
        self._send(AbortRequest(request_id))

    def _stop_seq(self, request_id: str, index: int) -> None:
        self._send(StopSequence(request_id, index))

    def _closed(self, stream: GenerationStream) -> None:
        self._streams.pop(stream.request_id, None)
        self.totals.add(stream)
        if not stream.finished:  # consumer went away (disconnect, cancel): free the blocks now
            self._send(AbortRequest(stream.request_id))

    def _send(self, command: Command) -> None:
        self._device.submit(self._apply, command)

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

    def _apply(self, command: Command) -> None:
        engine = self.engine
        if isinstance(command, AddRequest):
            if command.request_id in self._streams:
                try:
                    engine.add_request(
                        command.request_id,
                        command.prompt_token_ids,
                        command.params,
                        priority=command.priority,
                    )
                except LLMServeError as exc:  # e.g. a request the scheduler can never fit
                    self._loop.call_soon_threadsafe(self._fail_one, command.request_id, exc)
        elif isinstance(command, AbortRequest):
            engine.abort(command.request_id, command.finish_reason)
        elif isinstance(command, StopSequence):
            engine.scheduler.abort_request(command.request_id, "stop", index=command.index)
        self._stats = engine.stats()

    def _dispatch(self, events: list[SeqEvent]) -> None:
        by_request: dict[str, list[SeqEvent]] = {}
        for event in events:
            by_request.setdefault(event.request_id, []).append(event)
        for request_id, group in by_request.items():
            stream = self._streams.get(request_id)
            if stream is not None:
                stream.put(group)

    def _fail_one(self, request_id: str, exc: BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.put(exc)

    def _fail_all(self, exc: BaseException) -> None:
        for stream in self._streams.values():
            stream.put(exc)


class Totals:
    """Requests and tokens served since start (for /v1/status)."""

    def __init__(self) -> None:
        self.requests = self.prompt_tokens = self.completion_tokens = 0

    def add(self, stream: GenerationStream) -> None:
        self.requests += 1
        self.prompt_tokens += len(stream.prompt_token_ids)
        self.completion_tokens += stream.num_generated_tokens


def _make_metrics(model_name: str, max_model_len: int, stats_fn):
    from llmserve.engine.metrics import EngineMetrics

    return EngineMetrics(model_name, max_model_len=max_model_len, stats_fn=stats_fn)
