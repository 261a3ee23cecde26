"""Typed commands from the event loop to the engine on the device thread (run between steps)."""

from __future__ import annotations

from dataclasses import dataclass

from llmserve.engine.sampling import SamplingParams


@dataclass(frozen=True, slots=True)
class AddRequest:
    """Queue a validated request."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int = 0


@dataclass(frozen=True, slots=True)
class AbortRequest:
    """Finish every unfinished sequence of a request and free its blocks."""

    request_id: str
    finish_reason: str = "abort"


@dataclass(frozen=True, slots=True)
class StopSequence:
    """One choice matched a stop string on the API side: finish it with reason "stop"."""

    request_id: str
    index: int


Command = AddRequest | AbortRequest | StopSequence
