"""The one thread that runs all model work: loading, engine steps, embeddings.

Why one thread: torch's CPU ops run on an OpenMP pool owned by the calling thread. Once two
threads have used it, libgomp sees more threads than cores and throttles its spin-waits, which
made every small op 2-4x slower here (a decode step went from 28 to 40 ms). So every backend call
goes through this thread, and the event loop only exchanges plain data with it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol


class Stepper(Protocol):
    """Something with steps to run between jobs (the engine)."""

    def has_work(self) -> bool: ...

    def step_once(self) -> None: ...


class DeviceThread:
    """Runs submitted jobs in order, and steps every registered stepper while it has work."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._steppers: list[Stepper] = []
        self._thread = threading.Thread(target=self._loop, name="llmserve-device", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn(*args, **kwargs)``; it runs before the next engine step."""
        future: Future = Future()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # delivered to the caller, never kills the thread
                future.set_exception(exc)

        self._jobs.put(job)
        return future

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the device thread and return its result (blocking)."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()

    def add_stepper(self, stepper: Stepper) -> Future:
        return self.submit(self._steppers.append, stepper)

    def remove_stepper(self, stepper: Stepper) -> Future:
        return self.submit(lambda: stepper in self._steppers and self._steppers.remove(stepper))

    def _loop(self) -> None:
        while True:
            busy = [s for s in self._steppers if s.has_work()]
            self._drain(block=not busy)
            for stepper in busy:
                if stepper in self._steppers and stepper.has_work():
                    stepper.step_once()

    def _drain(self, block: bool) -> None:
        try:
            job = self._jobs.get(timeout=0.5) if block else self._jobs.get_nowait()
        except queue.Empty:
            return
        while True:
            job()
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return


_DEVICE: DeviceThread | None = None
_LOCK = threading.Lock()


def device_thread() -> DeviceThread:
    """The process's device thread, started on first use."""
    global _DEVICE
    with _LOCK:
        if _DEVICE is None:
            _DEVICE = DeviceThread()
        return _DEVICE
