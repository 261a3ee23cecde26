"""The engine-core process: it owns the backend, the LLMEngine and the device thread.

Started by engine/core_client.py (``python -m llmserve.engine.core_process FD``, a fresh
interpreter, never a fork). The first message on the socket is the pickled start-up (config,
model folder); the process loads the plugins (a test's fault plugin too), the backend and the
engine, answers Ready or StartFailed, then runs: its main thread reads commands from the socket
and queues them on the device thread, which applies them between steps and sends each step's
events back. It exits on Shutdown, or when the API process's end of the socket closes.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import threading
from multiprocessing.connection import Connection

from llmserve.engine import core_messages as m
from llmserve.engine.device_thread import device_thread
from llmserve.engine.engine import EngineStats, LLMEngine
from llmserve.errors import LLMServeError
from llmserve.sources.tokenizer import load_tokenizer

log = logging.getLogger("llmserve.engine")

FAILURE_POLL_S = 0.25
UTILITIES = ("sleep", "wake_up", "request_phases", "reset_prefix_cache")


class EngineCore:
    """Steps one LLMEngine on the device thread and answers the API process's commands."""

    def __init__(self, engine: LLMEngine, conn: Connection) -> None:
        self.engine = engine
        self.conn = conn
        self.error: str | None = None
        self._lock = threading.Lock()  # the device thread and the compile pool both send
        self._sent_stats: EngineStats | None = None
        self._compiler = None
        self._compiling: dict = {}  # structured outputs still compiling, by what they compile
        self._device = device_thread()

    def send(self, message) -> None:
        data = m.encode(message)
        with self._lock:
            self.conn.send_bytes(data)

    # --- device thread ---------------------------------------------------------------------------

    def has_work(self) -> bool:
        return self.error is None and self.engine.has_work()

    def step_once(self) -> None:
        try:
            events = self.engine.step()
        except BaseException as exc:
            log.exception("engine step failed")
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        stats = self.engine.stats()
        if events:
            self._sent_stats = stats
            self.send(m.StepOutputs(events, stats))
        else:
            self._send_stats(stats)

    def apply(self, command) -> None:
        engine = self.engine
        if isinstance(command, m.AddRequest):
            self._add(command)
        elif isinstance(command, m.Abort):
            engine.abort(command.request_id, command.finish_reason)
        elif isinstance(command, m.StopSequence):
            engine.scheduler.abort_request(command.request_id, "stop", index=command.index)
        elif isinstance(command, m.Utility):
            self._utility(command)
        if not self.has_work():  # no step will follow to carry the new numbers
            self._send_stats(engine.stats())

    def _add(self, command: m.AddRequest) -> None:
        from llmserve.structured.remote import constraint_from_wire

        rid = command.request_id
        try:
            params = m.params_from_wire(command.params)

            def verdict(exc: BaseException | None) -> None:
                self.send(m.ConstraintReady(rid, None if exc is None else m.error_to_wire(exc)))

            wire = command.constraint
            params.constraint = constraint_from_wire(wire, self.compiler, verdict, self._compiling)
            self.engine.add_request(rid, command.prompt_token_ids, params, priority=command.priority)
        except Exception as exc:  # e.g. a request the scheduler can never fit
            if not isinstance(exc, LLMServeError):
                log.exception("request %s could not be added", rid)
            self.send(m.RequestFailed(rid, m.error_to_wire(exc)))

    def _utility(self, call: m.Utility) -> None:
        if call.method not in UTILITIES:
            self.send(m.UtilityReply(call.call_id, error=m.WireError("LLMServeError", call.method)))
            return
        try:
            result = getattr(self.engine, call.method)(*call.args)
        except Exception as exc:
            self.send(m.UtilityReply(call.call_id, error=m.error_to_wire(exc)))
        else:
            self.send(m.UtilityReply(call.call_id, result))

    def _send_stats(self, stats: EngineStats) -> None:
        if stats != self._sent_stats:
            self._sent_stats = stats
            self.send(m.Stats(stats))

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
            self.send(m.EngineFailed(message))

    def compiler(self):
        """The structured-output compiler of this engine's model (made on first use)."""
        if self._compiler is None:
            from llmserve.structured.compiler import StructuredOutputCompiler

            config, info = self.engine.config, self.engine.model_info
            self._compiler = StructuredOutputCompiler(
                load_tokenizer(self.engine.model_dir),
                info.vocab_size,
                info.eos_token_ids,
                backend=config.structured_outputs_backend,
                timeout=config.structured_outputs_timeout,
            )
        return self._compiler

    # --- main thread -----------------------------------------------------------------------------

    def serve(self) -> None:
        """Read commands until Shutdown or the API process goes away."""
        self._device.add_stepper(self).result()
        threading.Thread(target=self._watch_backend, name="llmserve-engine-watch", daemon=True).start()
        while True:
            try:
                command = m.to_engine.decode(self.conn.recv_bytes())
            except (EOFError, OSError):
                log.info("the API process went away; engine stopping")
                break
            if isinstance(command, m.Shutdown):
                break
            self._device.submit(self.apply, command)
        self._device.remove_stepper(self).result()
        if self._compiler is not None:
            self._compiler.close()

    def _watch_backend(self) -> None:
        """A lost worker (tensor parallel) kills the engine even between steps."""
        event = threading.Event()
        while self.error is None and not event.wait(FAILURE_POLL_S):
            failure = self.engine.backend.failure()
            if failure is not None:
                log.error("engine dead: %s", failure)
                self._fail(failure)


def load_engine(config, model_dir: str) -> LLMEngine:
    """The backend and engine ``llmserve serve`` would make for this model, plugins loaded here."""
    from llmserve.plugins import load_plugins
    from llmserve.server.startup import resolve_backend_name

    plugins = load_plugins(config=config).check()
    backend = plugins.backends()[resolve_backend_name(config, plugins)].obj(config)
    processors = [plugins.logits_processors()[name].obj() for name in config.logits_processors]
    try:
        return device_thread().run(LLMEngine, backend, model_dir, config, logits_processors=processors)
    except BaseException:
        backend.shutdown()
        raise


def main(fd: int) -> int:
    # The API process decides when to stop (Shutdown, or its end of the socket closing): a Ctrl-C
    # or a SIGTERM sent to the whole process group must not look like an engine death.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(fd)
    config, model_dir = pickle.loads(conn.recv_bytes())
    from llmserve.server.logs import setup_logging

    setup_logging(config)
    try:
        engine = load_engine(config, model_dir)
    except BaseException as exc:
        if not isinstance(exc, LLMServeError):
            log.exception("the engine process failed to load %s", model_dir)
        conn.send_bytes(m.encode(m.StartFailed(m.error_to_wire(exc))))
        return 1
    info = engine.model_info
    ready = m.Ready(
        {"architecture": info.architecture, "vocab_size": info.vocab_size, "num_layers": info.num_layers,
         "num_kv_heads": info.num_kv_heads, "head_dim": info.head_dim, "max_model_len": info.max_model_len,
         "dtype": info.dtype, "eos_token_ids": list(info.eos_token_ids)},
        engine.max_model_len, engine.num_blocks, engine.kv_capacity_tokens,
        engine.scheduler.config.scheduling_policy, engine.backend.describe(), engine.stats(), os.getpid(),
    )  # fmt: skip
    conn.send_bytes(m.encode(ready))
    try:
        EngineCore(engine, conn).serve()
    finally:
        device_thread().run(engine.backend.shutdown)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
