"""JSON schema checks made before compiling, and the transforms request flags ask for.

The backends compile most schemas, but some mistakes they accept make a grammar that allows no
output (a ``$ref`` chain that refers to itself), and xgrammar ignores keywords it does not
implement (the output would then not follow the schema). Both are found here, by walking the
schema's subschemas only (never property names or ``enum`` data).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from llmserve.errors import InvalidRequestError

_SCHEMA_KEYS = ("items", "additionalProperties", "contains", "not", "if", "then", "else")
_SCHEMA_KEYS += ("propertyNames", "unevaluatedProperties", "unevaluatedItems", "additionalItems")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")

# Keywords xgrammar 0.2.8 compiles but does not enforce (checked one by one): "auto" sends a
# schema using them to guidance, which implements some and refuses the rest (a 400, not a lie).
XGRAMMAR_IGNORES = frozenset(
    {"uniqueItems", "contains", "minContains", "maxContains", "not", "if", "then", "else"}
    | {"dependentRequired", "dependentSchemas", "unevaluatedProperties", "unevaluatedItems"}
)


def subschemas(schema: Any) -> Iterator[dict[str, Any]]:
    """Every schema object inside ``schema`` (itself first), depth first."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        yield node
        for key in _SCHEMA_KEYS:
            value = node.get(key)
            stack.extend(value if isinstance(value, list) else [value])
        for key in _SCHEMA_LISTS:
            value = node.get(key)
            if isinstance(value, list):
                stack.extend(value)
        for key in _SCHEMA_MAPS:
            value = node.get(key)
            if isinstance(value, dict):
                stack.extend(value.values())


def _resolve(root: dict[str, Any], ref: str) -> Any:
    """The subschema a local ``$ref`` ("#", "#/$defs/a") points to; 400 when it does not exist."""
    if not ref.startswith("#"):
        raise InvalidRequestError(
            f"the JSON schema refers to {ref!r}: only local references ('#/...') are supported",
            param="json_schema",
        )
    node: Any = root
    for part in filter(None, ref[1:].split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise InvalidRequestError(f"the JSON schema's $ref {ref!r} points nowhere", param="json_schema")
    return node


def check_schema(schema: Any) -> None:
    """400 for a schema that is not an object, a dangling or remote ``$ref``, or a ``$ref``
    that reaches itself through references alone (it could never produce a value)."""
    if isinstance(schema, bool):
        if not schema:
            raise InvalidRequestError("the JSON schema `false` allows no output", param="json_schema")
        return
    if not isinstance(schema, dict):
        raise InvalidRequestError("the JSON schema must be an object", param="json_schema")
    for node in subschemas(schema):
        ref = node.get("$ref")
        if ref is None:
            continue
        if not isinstance(ref, str):
            raise InvalidRequestError("a $ref in the JSON schema must be a string", param="json_schema")
        seen = [ref]
        target = _resolve(schema, ref)
        # follow references that add nothing of their own: a cycle of them never ends
        while isinstance(target, dict) and isinstance(target.get("$ref"), str):
            nxt = target["$ref"]
            if nxt in seen:
                chain = " -> ".join([*seen, nxt])
                raise InvalidRequestError(
                    f"the JSON schema's $ref is self-referential ({chain}): it can never produce a value",
                    param="json_schema",
                )
            seen.append(nxt)
            target = _resolve(schema, nxt)


def xgrammar_ignored_keyword(schema: Any) -> str | None:
    """The first keyword of ``schema`` that xgrammar would ignore, or None."""
    for node in subschemas(schema):
        for key in node:
            if key in XGRAMMAR_IGNORES:
                return key
    return None


def without_additional_properties(schema: Any) -> Any:
    """A copy where objects that do not say otherwise allow no properties beyond theirs."""
    if not isinstance(schema, dict):
        return schema
    schema = copy.deepcopy(schema)
    for node in subschemas(schema):
        if ("properties" in node or node.get("type") == "object") and "additionalProperties" not in node:
            node["additionalProperties"] = False
    return schema
