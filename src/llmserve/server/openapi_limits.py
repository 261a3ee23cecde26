"""The OpenAPI document as this server enforces it: the bounds set by flags and models.

Request models declare what holds everywhere (``n >= 1``); what depends on the configuration
(``--max-n``, ``--max-logprobs``, ``--max-stop``, the context length, whether a request may
bring its own chat template, the served model names, the embedding size) is written into the
served document here, so a client or a fuzzer reading ``/openapi.json`` sees the limits the
server applies.
"""

from __future__ import annotations

from typing import Any

_TOKENS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_DIMENSIONS = ("dimensions", "output_dimension")


def apply_limits(
    spec: dict[str, Any],
    config,
    max_model_len: int | None,
    model_names: list[str] | None = None,
    embedding_dims: list[int] | None = None,
) -> dict[str, Any]:
    """``spec`` with the configured bounds on every request schema's fields (in place).

    ``model_names``: every name a request's ``model`` may give (others are a 404; an empty name
    and ``default`` pick the first model). ``embedding_dims``: the sizes the served embedding
    models return (``dimensions`` / ``output_dimension`` must be one of them)."""
    maxima = {"n": config.max_n, "best_of": config.max_n}
    for name in ("logprobs", "top_logprobs", "prompt_logprobs"):
        maxima[name] = config.max_logprobs
    if max_model_len:
        maxima.update(dict.fromkeys(_TOKENS, max_model_len))
    lists = dict.fromkeys(("stop", "stop_token_ids", "stop_sequences"), config.max_stop)
    schemas = spec.get("components", {}).get("schemas", {})
    requests = _request_schemas(spec)
    for key, schema in schemas.items():
        props = schema.get("properties") or {}
        for name, prop in props.items():
            if name in maxima and not prop.get("x-ceiling"):
                _bound(prop, "integer", "maximum", maxima[name])
            elif name in lists:
                _bound(prop, "array", "maxItems", lists[name])
            elif name == "model" and model_names and key in requests:
                _enum(prop, "string", [*model_names, "default", ""])
            elif name in _DIMENSIONS and embedding_dims and key in requests:
                _enum(prop, "integer", embedding_dims)
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


def _enum(prop: dict[str, Any], kind: str, values: list[Any]) -> None:
    """Restrict the ``kind`` branch(es) of a property to ``values``."""
    for branch in [prop, *prop.get("anyOf", [])]:
        if branch.get("type") == kind:
            branch["enum"] = list(dict.fromkeys(values))


def _request_schemas(spec: dict[str, Any]) -> set[str]:
    """Names of the component schemas a request body refers to, directly or not."""
    schemas = spec.get("components", {}).get("schemas", {})
    found: set[str] = set()
    todo = [op.get("requestBody") for item in spec.get("paths", {}).values() for op in item.values()]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in found:
                    found.add(name)
                    todo.append(schemas.get(name))
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return found
