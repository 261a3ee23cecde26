"""Sampling parameters (validated).

Plain data: no torch or jax here. Every backend's sampler implements the same semantics. Token
constraints (structured outputs) come in as a ``ConstraintSpec`` (engine/constraints.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmserve.engine.constraints import ConstraintSpec
from llmserve.errors import InvalidRequestError

# Per-request caps where no server config gives them (--max-n, --max-logprobs, --max-stop).
DEFAULT_MAX_N = 128
DEFAULT_MAX_LOGPROBS = 20
DEFAULT_MAX_STOP = 64


@dataclass(slots=True)
class SamplingParams:
    """What to generate and how; field names and defaults follow vLLM's SamplingParams."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    allowed_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    detokenize: bool = True
    extra_args: dict | None = None  # per-request arguments for logits processors (vLLM's name)
    constraint: ConstraintSpec | None = None  # one Constraint per sequence is made from it

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        if self.top_k == -1:
            self.top_k = 0
        self.logit_bias = {int(k): float(v) for k, v in (self.logit_bias or {}).items()}
        self.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    def validate(self) -> None:
        """Raise InvalidRequestError naming the first bad field (run once, at construction)."""

        for name in (
            "temperature",
            "top_p",
            "min_p",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
        ):
            if not math.isfinite(getattr(self, name)):
                _bad(name, "must be a finite number")
        if not isinstance(self.n, int) or self.n < 1:
            _bad("n", f"must be at least 1, got {self.n}")
        if self.temperature < 0:
            _bad("temperature", f"must be non-negative, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            _bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            _bad("top_k", f"must be -1 (disable), 0 (disable) or at least 1, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            _bad("min_p", f"must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2 <= value <= 2:
                _bad(name, f"must be in [-2, 2], got {value}")
        if not 0 < self.repetition_penalty <= 2:
            _bad("repetition_penalty", f"must be in (0, 2], got {self.repetition_penalty}")
        if self.max_tokens is not None and self.max_tokens < 1:
            _bad("max_tokens", f"must be at least 1, got {self.max_tokens}")
        if self.min_tokens < 0:
            _bad("min_tokens", f"must be non-negative, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            _bad("min_tokens", f"must be at most max_tokens={self.max_tokens}, got {self.min_tokens}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                _bad(name, f"must be non-negative, got {value}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            _bad("seed", "is out of range")
        for token, bias in self.logit_bias.items():
            if not -100 <= bias <= 100:
                _bad("logit_bias", f"values must be in [-100, 100], got {bias} for token {token}")
        if self.stop and not self.detokenize:
            _bad("stop", "strings need detokenize=True")
        if self.allowed_token_ids is not None and not self.allowed_token_ids:
            _bad("allowed_token_ids", "must not be empty")
        if self.constraint is not None and not isinstance(self.constraint, ConstraintSpec):
            _bad("constraint", f"must be a ConstraintSpec, got {type(self.constraint).__name__}")

    def check_limits(self, config=None, logprobs_field: str = "logprobs") -> None:
        """The server's per-request caps (``--max-n``, ``--max-logprobs``, ``--max-stop``; the
        defaults without a config): nothing a request asks for may allocate past them.
        ``logprobs_field`` names logprobs in the error (chat calls it ``top_logprobs``)."""
        max_n = getattr(config, "max_n", DEFAULT_MAX_N)
        max_logprobs = getattr(config, "max_logprobs", DEFAULT_MAX_LOGPROBS)
        max_stop = getattr(config, "max_stop", DEFAULT_MAX_STOP)
        if self.n > max_n:
            _bad("n", f"must be at most {max_n} (--max-n), got {self.n}")
        for name, field_name in (("logprobs", logprobs_field), ("prompt_logprobs", "prompt_logprobs")):
            value = getattr(self, name)
            if value is not None and value > max_logprobs:
                _bad(field_name, f"must be at most {max_logprobs} (--max-logprobs), got {value}")
        for name in ("stop", "stop_token_ids"):
            count = len(getattr(self, name) or ())
            if count > max_stop:
                _bad(name, f"may have at most {max_stop} entries (--max-stop), got {count}")

    def check_vocab(self, vocab_size: int) -> None:
        """The checks that need the model: every token id given is in its vocabulary."""
        for name in ("logit_bias", "stop_token_ids", "allowed_token_ids"):
            for token in getattr(self, name) or ():
                if not 0 <= token < vocab_size:
                    _bad(name, f"token id {token} is out of vocabulary (size {vocab_size})")


def _bad(param: str, message: str) -> None:
    raise InvalidRequestError(f"{param} {message}", param=param)
