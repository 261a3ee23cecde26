"""Tool calls written as a JSON array ``[{"name": ..., "parameters": {...}}, ...]``: the format a
``required`` tool choice constrains the output to when no tool parser brings its own. The parser
pipeline (``ParserPipeline(tool_choice="required")``) reads it back, streaming or not.
"""

from __future__ import annotations

from typing import Any

from llmserve.errors import InvalidRequestError


def calls_schema(functions: list[dict[str, Any]], max_calls: int | None = None) -> dict[str, Any]:
    """The JSON schema of one or more (at most ``max_calls``) calls of ``functions`` (OpenAI
    function dicts), as vLLM builds it: an array of ``{"name": one tool's name, "parameters": that
    tool's parameters}``. Each tool's ``$defs`` move to the top so its local references still
    resolve; two tools defining one name differently are a 400."""
    defs: dict[str, Any] = {}
    options = []
    for function in functions:
        params = dict(function.get("parameters") or {"type": "object", "properties": {}})
        for name, value in (params.pop("$defs", None) or {}).items():
            if name in defs and defs[name] != value:
                raise InvalidRequestError(f"tools define $defs/{name} differently", param="tools")
            defs[name] = value
        options.append(
            {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": [function["name"]]}, "parameters": params},
                "required": ["name", "parameters"],
            }
        )
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": options}}
    if max_calls is not None:
        schema["maxItems"] = max_calls
    if defs:
        schema["$defs"] = defs
    return schema
