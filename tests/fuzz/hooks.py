"""Schemathesis hooks for the fuzz runs (``tests/fuzz/run.py``): keep generated requests cheap to
serve, and hold every 4xx to the protocol's error shape."""

from __future__ import annotations

import schemathesis

# Fields that only make a valid request slower: capped so thousands of cases run in minutes.
# Values at or under the cap (zero and negatives included) go through as generated.
CAPS = {"max_tokens": 4, "max_completion_tokens": 4, "max_output_tokens": 4, "n": 2, "best_of": 2,
        "min_tokens": 2, "max_tokens_per_doc": 16}  # fmt: skip
# A request's own time budget (vLLM's `timeout`): a valid one this short is answered 504 by design
# (tests/test_operations.py covers it), so valid values are raised to a floor; zero and
# negatives go through as generated.
FLOORS = {"timeout": 120.0}


def _cap(body):
    if isinstance(body, dict):
        for key, cap in CAPS.items():
            value = body.get(key)
            # floats too: 5e8 passes as an integer, and Anthropic's max_tokens is only a ceiling
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > cap:
                body[key] = cap
        for key, floor in FLOORS.items():
            value = body.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < floor:
                body[key] = floor
    return body


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    case.body = _cap(case.body)


def _openai_shape(body) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)


def _anthropic_shape(body) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return body.get("type") == "error" and isinstance(error, dict) and {"type", "message"} <= set(error)


@schemathesis.check
def error_shape(ctx, response, case):
    """Every 4xx is JSON in the shape of the protocol owning the path, with a message."""
    if not 400 <= response.status_code < 500:
        return None
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{response.status_code} without a JSON body: {response.text[:200]!r}") from None
    anthropic = case.path.startswith("/v1/messages")
    if not (_anthropic_shape(body) if anthropic else _openai_shape(body)):
        raise AssertionError(f"{response.status_code} not in the protocol's error shape: {body!r}"[:400])
    return None
