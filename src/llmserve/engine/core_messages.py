"""The typed messages between the API process and the engine-core process (msgpack via msgspec).

API -> engine: AddRequest, Abort, StopSequence, Utility (a call with a reply), Shutdown.
Engine -> API: Ready or StartFailed (once, at start), StepOutputs (one per step: every event of
the step and the engine's numbers after it), Stats, UtilityReply, ConstraintReady (a structured
output's grammar compiled, or failed to), EngineFailed (the engine cannot run any more).
Sampling parameters travel as plain data; a constraint as the data it is compiled from
(structured/remote.py).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import msgspec

from llmserve import errors
from llmserve.engine.engine import EngineStats, SeqEvent
from llmserve.engine.sampling import SamplingParams


class AddRequest(msgspec.Struct, tag=True, array_like=True):
    request_id: str
    prompt_token_ids: list[int]
    params: dict[str, Any]  # SamplingParams fields, without the constraint
    constraint: dict[str, Any] | None = None
    priority: int = 0


class Abort(msgspec.Struct, tag=True, array_like=True):
    request_id: str
    finish_reason: str = "abort"


class StopSequence(msgspec.Struct, tag=True, array_like=True):
    request_id: str
    index: int


class Utility(msgspec.Struct, tag=True, array_like=True):
    call_id: int
    method: str
    args: list[Any] = []


class Shutdown(msgspec.Struct, tag=True, array_like=True):
    pass


ToEngine = AddRequest | Abort | StopSequence | Utility | Shutdown


class WireError(msgspec.Struct, array_like=True):
    """An exception as data: its llmserve class name, message and request parameter."""

    type: str
    message: str
    param: str | None = None
    status: int = 500


class Ready(msgspec.Struct, tag=True, array_like=True):
    model_info: dict[str, Any]
    max_model_len: int
    num_blocks: int
    kv_capacity_tokens: int
    scheduling_policy: str
    backend: str  # the backend's one-line description
    stats: EngineStats
    pid: int


class StartFailed(msgspec.Struct, tag=True, array_like=True):
    error: WireError


class StepOutputs(msgspec.Struct, tag=True, array_like=True):
    events: list[SeqEvent]
    stats: EngineStats


class Stats(msgspec.Struct, tag=True, array_like=True):
    stats: EngineStats


class RequestFailed(msgspec.Struct, tag=True, array_like=True):
    request_id: str
    error: WireError


class UtilityReply(msgspec.Struct, tag=True, array_like=True):
    call_id: int
    result: Any = None
    error: WireError | None = None


class ConstraintReady(msgspec.Struct, tag=True, array_like=True):
    request_id: str
    error: WireError | None = None


class EngineFailed(msgspec.Struct, tag=True, array_like=True):
    message: str


FromEngine = (
    Ready | StartFailed | StepOutputs | Stats | RequestFailed | UtilityReply | ConstraintReady | EngineFailed
)

encode = msgspec.msgpack.Encoder().encode
to_engine = msgspec.msgpack.Decoder(ToEngine)
from_engine = msgspec.msgpack.Decoder(FromEngine)

_PARAM_FIELDS = tuple(f.name for f in fields(SamplingParams) if f.name != "constraint")


def params_to_wire(params: SamplingParams) -> dict[str, Any]:
    """SamplingParams as plain data (its constraint travels separately)."""
    return {name: getattr(params, name) for name in _PARAM_FIELDS}


def params_from_wire(data: dict[str, Any]) -> SamplingParams:
    return SamplingParams(**data)


def error_to_wire(exc: BaseException) -> WireError:
    status = getattr(exc, "status", 500)
    return WireError(type(exc).__name__, str(exc), getattr(exc, "param", None), int(status))


def error_from_wire(err: WireError) -> BaseException:
    """The llmserve exception a WireError names; any other becomes an LLMServeError (500)."""
    cls = getattr(errors, err.type, None)
    if isinstance(cls, type) and issubclass(cls, errors.LLMServeError):
        return cls(err.message, param=err.param)
    exc = errors.LLMServeError(err.message, param=err.param)
    exc.status = err.status
    return exc
