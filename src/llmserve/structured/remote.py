"""Structured outputs when the engine core runs in its own process.

The API process does not compile: ``RemoteCompiler.start`` gives a ``RemoteSpec`` holding the
request's ``StructuredOutputs``, which travels to the engine process as data
(``constraint_to_wire``). There the engine's own compiler (and cache) compiles it on its pool
while the prompt is computed, as in process, and answers ``ConstraintReady``; ``RemoteSpec.ready``
awaits that answer, so a bad schema, regex or grammar is still a 400 before the response starts.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable, Iterator
from dataclasses import fields
from typing import Any

from llmserve.engine.constraints import Constraint, ConstraintSpec
from llmserve.errors import InvalidRequestError, LLMServeError
from llmserve.structured.pending import PendingSpec
from llmserve.structured.reasoning import AfterMarker
from llmserve.structured.request import StructuredOutputs

_SPEC_FIELDS = tuple(f.name for f in fields(StructuredOutputs))


class RemoteSpec(ConstraintSpec):
    """A structured output compiled in the engine process; ``ready`` waits for its verdict."""

    def __init__(self, spec: StructuredOutputs, timeout: float) -> None:
        self.spec = spec
        self.timeout = timeout
        self._verdict: asyncio.Future | None = None

    def new(self) -> Constraint:
        raise LLMServeError("this constraint is compiled in the engine process")

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Expect the engine's verdict (a request with it is being sent). The prompts of one
        request body share a spec: the first verdict, the same for all, answers every one."""
        if self._verdict is None:
            self._verdict = loop.create_future()

    def resolve(self, error: BaseException | None) -> None:
        """The engine's verdict: compiled (None), or the error to raise from ``ready``."""
        if self._verdict is not None and not self._verdict.done():
            self._verdict.set_result(error)

    async def ready(self) -> None:
        if self._verdict is None:
            return
        try:
            error = await asyncio.wait_for(asyncio.shield(self._verdict), self.timeout)
        except asyncio.TimeoutError:
            raise InvalidRequestError(
                f"compiling the {self.spec.what} took longer than {self.timeout:g} s; simplify it",
                param=self.spec.param,
            ) from None
        if error is not None:
            raise error


class RemoteCompiler:
    """The API process's stand-in for a model's StructuredOutputCompiler."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def start(self, spec: StructuredOutputs) -> ConstraintSpec:
        return RemoteSpec(spec, self.timeout)

    def close(self) -> None:
        """Nothing to release: the engine process owns the compiler."""


def remote_specs(spec: ConstraintSpec | None) -> Iterator[RemoteSpec]:
    """The RemoteSpecs in ``spec`` (itself, or inside a reasoning wrapper)."""
    if isinstance(spec, RemoteSpec):
        yield spec
    elif isinstance(spec, AfterMarker):
        yield from remote_specs(spec.inner)


def constraint_to_wire(spec: ConstraintSpec | None) -> dict[str, Any] | None:
    """A request's constraint as data for the engine process. A plugin's own ConstraintSpec
    travels pickled (it must be importable and picklable there)."""
    if spec is None:
        return None
    if isinstance(spec, RemoteSpec):
        return {"kind": "structured", "spec": {n: getattr(spec.spec, n) for n in _SPEC_FIELDS}}
    if isinstance(spec, AfterMarker):
        inner = constraint_to_wire(spec.inner)
        return {"kind": "after", "inner": inner, "marker": list(spec.marker_ids), "budget": spec.budget}
    try:
        return {"kind": "pickle", "data": pickle.dumps(spec)}
    except Exception as exc:
        raise LLMServeError(
            f"the constraint {type(spec).__name__} cannot be sent to the engine process ({exc}); "
            "serve with --no-engine-process"
        ) from None


def constraint_from_wire(
    data: dict[str, Any] | None,
    compiler: Callable[[], Any],
    on_verdict: Callable[[BaseException | None], None],
    compiling: dict[str, ConstraintSpec],
) -> ConstraintSpec | None:
    """The engine process's ConstraintSpec of ``constraint_to_wire``'s data. A structured output
    starts compiling on ``compiler()``'s pool, or joins the same one still compiling (kept in
    ``compiling``: the prompts of one request body come as several requests); ``on_verdict``
    hears how it went (from that pool's thread, or at once when it was cached)."""
    if data is None:
        return None
    kind = data["kind"]
    if kind == "structured":
        key = repr(sorted(data["spec"].items()))
        spec = compiling.get(key)
        if spec is None:
            values = dict(data["spec"])
            if values.get("choice") is not None:
                values["choice"] = tuple(values["choice"])
            spec = compiler().start(StructuredOutputs(**values))
            if isinstance(spec, PendingSpec):
                compiling[key] = spec
                spec.future.add_done_callback(lambda f: compiling.pop(key, None))
        if isinstance(spec, PendingSpec):
            spec.future.add_done_callback(lambda f: on_verdict(f.exception()))
        else:
            on_verdict(None)
        return spec
    if kind == "after":
        inner = constraint_from_wire(data["inner"], compiler, on_verdict, compiling)
        return AfterMarker(inner, data["marker"], data["budget"])
    if kind == "pickle":
        return pickle.loads(data["data"])
    raise LLMServeError(f"unknown constraint kind {kind!r}")
