"""The OpenAPI document as this server enforces it: the bounds set by flags and models.

Request models declare what holds everywhere (``n >= 1``); what depends on the configuration
(``--max-n``, ``--max-logprobs``, ``--max-stop``, the context length, whether a request may
bring its own chat template) is written into the served document here, so a client or a fuzzer
reading ``/openapi.json`` sees the limits the server applies.
"""

from __future__ import annotations

from typing import Any

_TOKENS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def apply_limits(spec: dict[str, Any], config, max_model_len: int | None) -> dict[str, Any]:
    """``spec`` with the configured bounds on every request schema's fields (in place)."""
    maxima = {"n": config.max_n, "best_of": config.max_n}
    for name in ("logprobs", "top_logprobs", "prompt_logprobs"):
        maxima[name] = config.max_logprobs
    if max_model_len:
        maxima.update(dict.fromkeys(_TOKENS, max_model_len))
    lists = dict.fromkeys(("stop", "stop_token_ids", "stop_sequences"), config.max_stop)
    for schema in spec.get("components", {}).get("schemas", {}).values():
        props = schema.get("properties") or {}
        for name, prop in props.items():
            if name in maxima:
                _bound(prop, "integer", "maximum", maxima[name])
            elif name in lists:
                _bound(prop, "array", "maxItems", lists[name])
        if "chat_template" in props and not config.trust_request_chat_template:
            props["chat_template"] = {
                "type": "null",
                "description": "Refused without --trust-request-chat-template.",
            }
    return spec


def _bound(prop: dict[str, Any], kind: str, key: str, value: int) -> None:
    """Set ``key`` on the ``kind`` branch(es) of a property (plain, or inside anyOf)."""
    for branch in [prop, *prop.get("anyOf", [])]:
        if branch.get("type") == kind:
            branch[key] = min(value, branch.get(key, value))
