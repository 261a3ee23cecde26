"""A constraint whose grammar is still compiling when its request is queued.

The compile runs on the compiler's pool while the engine computes the prompt: the scheduler holds
back the prompt's last token until ``is_ready`` (engine/constraints.py), and the protocol awaits
``ready`` before it answers, so a schema that fails to compile is still a 400.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from llmserve.engine.constraints import Constraint, ConstraintSpec


class PendingSpec(ConstraintSpec):
    """The ConstraintSpec a ``future`` will give; ``on_timeout`` turns a compile past
    ``timeout`` seconds into the exception to raise."""

    def __init__(self, future: Future, timeout: float, on_timeout: Callable[[], Exception]) -> None:
        self.future = future
        self.timeout = timeout
        self.on_timeout = on_timeout

    def new(self) -> Constraint:
        return _PendingConstraint(self.future)

    async def ready(self) -> None:
        try:
            spec = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self.future)), self.timeout)
        except asyncio.TimeoutError:
            raise self.on_timeout() from None
        await spec.ready()


class _PendingConstraint(Constraint):
    __slots__ = ("future", "inner")

    def __init__(self, future: Future) -> None:
        self.future = future
        self.inner: Constraint | None = None

    def _resolve(self) -> Constraint:
        if self.inner is None:
            self.inner = self.future.result(timeout=0).new()  # ready: the scheduler waited for it
        return self.inner

    def is_ready(self) -> bool:
        if self.inner is not None:
            return self.inner.is_ready()
        return self.future.done()

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        self._resolve().fill_bitmask(bitmask, row)

    def accept(self, token_id: int) -> bool:
        return self._resolve().accept(token_id)

    def is_terminated(self) -> bool:
        return self.inner is not None and self.inner.is_terminated()
