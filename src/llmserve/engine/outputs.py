"""What the engine streams back for a request: plain dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmserve.backends.base import TokenLogprob


@dataclass(slots=True)
class CompletionOutput:
    """One choice's progress. ``text``/``token_ids``/``logprobs`` hold only what is new since the
    previous output of this stream (deltas); ``finish_reason`` is set on the choice's last one."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[tuple[TokenLogprob, list[TokenLogprob]]] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop string or token id that ended it
    num_output_tokens: int = 0  # cumulative

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestOutput:
    """One item of a request's output stream; ``outputs`` holds the choices that changed."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    prompt_logprobs: list[tuple[TokenLogprob, list[TokenLogprob]] | None] | None = None
    num_cached_tokens: int = 0
