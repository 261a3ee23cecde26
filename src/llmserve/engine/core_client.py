"""The API process's side of an engine core in its own process (``--engine-process``).

``EngineClient`` has AsyncEngine's interface, so routes cannot tell the two apart: the API
process tokenizes, keeps each request's GenerationStream (detokenizing, stop strings) and talks
to the engine process (engine/core_process.py) over a Unix socket pair in msgpack messages
(engine/core_messages.py). HTTP handling and decoding then share no GIL. ``EngineProcess``
stands where the backend stood: ``describe``, ``failure`` and ``shutdown``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import subprocess
import sys
import time
from multiprocessing import Pipe

from llmserve.backends.base import ModelInfo
from llmserve.engine import core_messages as m
from llmserve.engine.async_engine import AsyncEngine, Totals, _make_metrics, load_generation_defaults
from llmserve.engine.commands import AbortRequest, AddRequest, Command, StopSequence
from llmserve.engine.engine import EngineStats, validate_request
from llmserve.engine.sampling import SamplingParams
from llmserve.engine.stream import GenerationStream
from llmserve.errors import EngineDeadError, LLMServeError
from llmserve.sources.tokenizer import load_tokenizer
from llmserve.structured.remote import constraint_to_wire, remote_specs

log = logging.getLogger("llmserve.engine")

STOP_TIMEOUT_S = 30.0


class EngineProcess:
    """The engine-core process of one model: started and loaded in ``__init__`` (raising the
    engine's own error when it cannot load), stopped by ``shutdown``."""

    def __init__(self, config, model_dir: str) -> None:
        self.conn, child = Pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmserve.engine.core_process", str(child.fileno())],
            pass_fds=(child.fileno(),),
        )
        child.close()
        self._stopping = False
        self.conn.send_bytes(pickle.dumps((config, model_dir)))
        while not self.conn.poll(0.5):
            if self.proc.poll() is not None:
                raise LLMServeError(
                    f"the engine process for {model_dir} exited with code {self.proc.returncode} "
                    "while loading; see the log above"
                )
        reply = m.from_engine.decode(self.conn.recv_bytes())
        if isinstance(reply, m.StartFailed):
            self.proc.wait(STOP_TIMEOUT_S)
            raise m.error_from_wire(reply.error)
        self.ready: m.Ready = reply
        self.pid = reply.pid

    def describe(self) -> str:
        return f"{self.ready.backend}; engine process pid {self.pid}"

    def failure(self) -> str | None:
        """Why the engine process cannot serve any more (it exited), or None."""
        code = self.proc.poll()
        if code is None or self._stopping:
            return None
        return f"the engine process (pid {self.pid}) exited with code {code}"

    def shutdown(self) -> None:
        """Ask the engine process to stop (it releases its backend), kill it if it hangs."""
        if self._stopping:
            return
        self._stopping = True
        try:
            self.conn.send_bytes(m.encode(m.Shutdown()))
        except OSError:
            pass
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("the engine process (pid %d) did not stop; killing it", self.pid)
            self.proc.kill()
            self.proc.wait()
        self.conn.close()


class EngineClient(AsyncEngine):
    """AsyncEngine's interface over an EngineProcess."""

    def __init__(self, process: EngineProcess, tokenizer, config, generation_defaults, model_name) -> None:
        ready = process.ready
        self.engine = None  # in the other process
        self.backend = process
        self.tokenizer = tokenizer
        self.config = config
        self.model_info = ModelInfo(
            **{**ready.model_info, "eos_token_ids": tuple(ready.model_info["eos_token_ids"])}
        )
        self.max_model_len = ready.max_model_len
        self.num_blocks = ready.num_blocks
        self.kv_capacity_tokens = ready.kv_capacity_tokens
        self.generation_defaults = generation_defaults
        self.metrics = _make_metrics(model_name, self.max_model_len, self.stats)
        self.error: BaseException | None = None
        self._streams: dict[str, GenerationStream] = {}
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats: EngineStats = ready.stats
        self._policy = ready.scheduling_policy
        self._sleep_level = 0
        self._calls: dict[int, asyncio.Future] = {}
        self._call_ids = itertools.count()
        self._constraints: dict[str, list] = {}  # request id -> RemoteSpecs awaiting the verdict
        self.totals = Totals()
        self.started = time.time()

    @classmethod
    def create(cls, config, model_dir: str, model_name: str) -> EngineClient:
        process = EngineProcess(config, model_dir)
        try:
            tokenizer = load_tokenizer(model_dir)
            defaults = load_generation_defaults(model_dir, config.generation_config)
        except BaseException:
            process.shutdown()
            raise
        return cls(process, tokenizer, config, defaults, model_name)

    @property
    def pid(self) -> int:
        """The engine process's id."""
        return self.backend.pid

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._loop.add_reader(self.backend.conn.fileno(), self._readable)

    async def stop(self) -> None:
        if self._running:
            self._running = False
            self._loop.remove_reader(self.backend.conn.fileno())

    async def sleep(self, level: int = 1) -> None:
        await self._call("sleep", level)
        self._sleep_level = max(self._sleep_level, level)

    async def wake_up(self) -> None:
        await self._call("wake_up")
        self._sleep_level = 0

    @property
    def is_sleeping(self) -> bool:
        return self._sleep_level > 0

    @property
    def is_dead(self) -> bool:
        if self.error is None and (failure := self.backend.failure()) is not None:
            self._die(failure)
        return self.error is not None

    async def request_phases(self) -> dict[str, tuple[str, int]]:
        phases = await self._call("request_phases")
        return {rid: (phase, computed) for rid, (phase, computed) in phases.items()}

    # --- requests --------------------------------------------------------------------------------

    def add_request(
        self, request_id: str, prompt_token_ids, params: SamplingParams, **kwargs
    ) -> GenerationStream:
        try:
            return super().add_request(request_id, prompt_token_ids, params, **kwargs)
        except LLMServeError:
            stream = self._streams.get(request_id)
            if stream is not None and stream.params is params:  # queued here, but could not be sent
                self._streams.pop(request_id)
                self._constraints.pop(request_id, None)
            raise

    def _validate(
        self, prompt_token_ids: list[int], params: SamplingParams, priority: int, prompt_param: str
    ) -> None:
        validate_request(
            prompt_token_ids, params, priority, policy=self._policy,
            vocab_size=self.model_info.vocab_size, max_model_len=self.max_model_len, config=self.config,
            prompt_param=prompt_param,
        )  # fmt: skip

    def _closed(self, stream: GenerationStream) -> None:
        self._constraints.pop(stream.request_id, None)
        super()._closed(stream)

    def _send(self, command: Command) -> None:
        if isinstance(command, AddRequest):
            params = command.params
            wire = constraint_to_wire(params.constraint)
            specs = list(remote_specs(params.constraint))
            for spec in specs:
                spec.bind(self._loop)
            if specs:
                self._constraints[command.request_id] = specs
            message = m.AddRequest(
                command.request_id, command.prompt_token_ids, m.params_to_wire(params), wire, command.priority
            )
        elif isinstance(command, AbortRequest):
            message = m.Abort(command.request_id, command.finish_reason)
        elif isinstance(command, StopSequence):
            message = m.StopSequence(command.request_id, command.index)
        else:
            message = command
        if self.error is not None:
            return
        try:
            self.backend.conn.send_bytes(m.encode(message))
        except OSError as exc:
            self._die(f"the engine process is gone ({exc})")

    async def _call(self, method: str, *args):
        if self.is_dead:
            raise EngineDeadError(f"The engine stopped after an error: {self.error}")
        call_id = next(self._call_ids)
        future = self._loop.create_future()
        self._calls[call_id] = future
        self._send(m.Utility(call_id, method, list(args)))
        return await future

    # --- messages from the engine process (event loop) -------------------------------------------

    def _readable(self) -> None:
        conn = self.backend.conn
        try:
            while conn.poll():
                self._handle(m.from_engine.decode(conn.recv_bytes()))
        except (EOFError, OSError):
            self._loop.remove_reader(conn.fileno())
            self._running = False
            if not self.backend._stopping:
                try:
                    code = self.backend.proc.wait(2)
                except subprocess.TimeoutExpired:
                    code = "none yet (its socket closed)"
                self._die(f"the engine process (pid {self.pid}) exited with code {code}")

    def _handle(self, msg) -> None:
        if isinstance(msg, m.StepOutputs):
            self._stats = msg.stats
            self._dispatch(msg.events)
        elif isinstance(msg, m.Stats):
            self._stats = msg.stats
        elif isinstance(msg, m.ConstraintReady):
            error = None if msg.error is None else m.error_from_wire(msg.error)
            for spec in self._constraints.pop(msg.request_id, ()):
                spec.resolve(error)
        elif isinstance(msg, m.UtilityReply):
            future = self._calls.pop(msg.call_id, None)
            if future is not None and not future.done():
                if msg.error is not None:
                    future.set_exception(m.error_from_wire(msg.error))
                else:
                    future.set_result(msg.result)
        elif isinstance(msg, m.RequestFailed):
            exc = m.error_from_wire(msg.error)
            for spec in self._constraints.pop(msg.request_id, ()):
                spec.resolve(exc)
            self._fail_one(msg.request_id, exc)
        elif isinstance(msg, m.EngineFailed):
            self._die(msg.message)

    def _die(self, message: str) -> None:
        if self.error is not None:
            return
        self.error = RuntimeError(message)
        log.error("engine dead: %s", message)
        exc = EngineDeadError(f"The engine stopped: {message}")
        for future in self._calls.values():
            if not future.done():
                future.set_exception(exc)
        self._calls.clear()
        for specs in self._constraints.values():
            for spec in specs:
                spec.resolve(exc)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._fail_all, exc)
