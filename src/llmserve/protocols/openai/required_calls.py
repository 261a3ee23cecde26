"""Tool calls written as a JSON array ``[{"name": ..., "parameters": {...}}, ...]``: the format a
``required`` tool choice constrains the output to when no tool parser brings its own. The parser
pipeline (``ParserPipeline(tool_choice="required")``) reads it back, streaming or not.
"""

from __future__ import annotations

from typing import Any


def required_schema(tools: list[dict[str, Any]], parallel_tool_calls: bool | None) -> dict[str, Any]:
    """The JSON schema of one or more calls of ``tools`` (OpenAI function dicts), as vLLM builds it:
    an array of ``{"name": one tool's name, "parameters": that tool's parameters}``. Each tool's
    ``$defs`` move to the top so its local references still resolve."""
    defs: dict[str, Any] = {}
    options = []
    for tool in tools:
        params = dict(tool.get("parameters") or {"type": "object", "properties": {}})
        for name, value in (params.pop("$defs", None) or {}).items():
            if name in defs and defs[name] != value:
                raise ValueError(f"tools define $defs/{name} differently")
            defs[name] = value
        options.append(
            {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": [tool["name"]]}, "parameters": params},
                "required": ["name", "parameters"],
            }
        )
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": options}}
    if parallel_tool_calls is False:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema
