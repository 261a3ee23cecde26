"""Request fields (OpenAI / vLLM names) -> SamplingParams."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from llmserve.engine.sampling import SamplingParams
from llmserve.errors import InvalidRequestError

_SPECIAL = {"max_tokens", "stop", "logprobs", "logit_bias", "constraint", "detokenize", "extra_args"}
_SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingParams) if f.name not in _SPECIAL)


def to_sampling_params(
    req: Any, defaults: dict[str, Any] | None, max_model_len: int, prompt_len: int, **overrides: Any
) -> SamplingParams:
    """Build SamplingParams from any request object with OpenAI / vLLM field names.

    Each SamplingParams field is taken from the request when set (not None), else from
    ``defaults`` (the model's generation_config), else SamplingParams' own default.
    ``max_completion_tokens`` wins over ``max_tokens``; when neither is set the completion may
    fill the context (capped by a generation_config ``max_tokens``). Chat's ``logprobs: bool`` +
    ``top_logprobs`` and completions' ``logprobs: int`` are both understood. ``overrides`` are
    applied last. Bad values raise InvalidRequestError naming the field.
    """
    defaults = defaults or {}
    kwargs: dict[str, Any] = {}
    for name in _SAMPLING_FIELDS:
        value = getattr(req, name, None)
        if value is None:
            value = defaults.get(name)
        if value is not None:
            kwargs[name] = value

    max_tokens = getattr(req, "max_completion_tokens", None)
    if max_tokens is None:
        max_tokens = getattr(req, "max_tokens", None)
        sent = getattr(req, "model_fields_set", None)
        if sent is not None and "max_tokens" not in sent and defaults.get("max_tokens"):
            max_tokens = None  # a schema default (completions' 16) gives way to the server's default
    if max_tokens is None:
        room = max(1, max_model_len - prompt_len)
        default_max = defaults.get("max_tokens")
        max_tokens = min(room, default_max) if default_max else room
    kwargs["max_tokens"] = max_tokens

    stop = getattr(req, "stop", None)
    if stop is not None:
        kwargs["stop"] = [stop] if isinstance(stop, str) else list(stop)

    logprobs = getattr(req, "logprobs", None)
    if isinstance(logprobs, bool):  # chat: a flag plus top_logprobs
        top = getattr(req, "top_logprobs", None)
        if top and not logprobs:
            raise InvalidRequestError(
                "when using `top_logprobs`, `logprobs` must be set to true.", param="top_logprobs"
            )
        kwargs["logprobs"] = (top or 0) if logprobs else None
    elif logprobs is not None:
        kwargs["logprobs"] = logprobs

    bias = getattr(req, "logit_bias", None)
    if bias:
        try:
            kwargs["logit_bias"] = {int(k): float(v) for k, v in bias.items()}
        except (TypeError, ValueError):
            raise InvalidRequestError(
                "logit_bias keys must be token ids (integers)", param="logit_bias"
            ) from None

    xargs = getattr(req, "vllm_xargs", None)
    if xargs:
        kwargs["extra_args"] = dict(xargs)

    kwargs.update(overrides)
    for name, value in kwargs.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequestError(f"{name} must be a finite number, got {value}", param=name)
    try:
        return SamplingParams(**kwargs)
    except InvalidRequestError:
        raise
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"Invalid sampling parameters: {exc}") from None
