"""What a request asks its output to follow, read from vLLM's / OpenAI's request fields.

Three spellings reach one ``StructuredOutputs``: OpenAI's ``response_format``, vLLM's
``structured_outputs`` object, and the older ``guided_*`` fields (accepted as aliases with a
deprecation warning in the log: silently ignoring them would return unconstrained text).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields, replace
from typing import Any

from llmserve.errors import InvalidRequestError

log = logging.getLogger("llmserve.structured")

KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
BACKENDS = ("auto", "xgrammar", "guidance")
_LEGACY = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}


@dataclass(frozen=True, slots=True)
class StructuredOutputs:
    """One output constraint (vLLM's ``StructuredOutputsParams``): exactly one of the kinds.

    ``json``: a JSON schema (dict or bool); ``regex``: a pattern the whole output matches;
    ``choice``: the output is one of these strings; ``grammar``: EBNF (GBNF) or Lark text;
    ``json_object``: any JSON object; ``structural_tag``: xgrammar's structural tag, as JSON text.
    ``backend`` overrides ``--structured-outputs-backend`` for this request; with
    ``disable_fallback`` "auto" does not retry with guidance when xgrammar fails to compile.
    """

    json: Any = None
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    disable_fallback: bool = False
    backend: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            what = ", ".join(given) if given else "none"
            raise InvalidRequestError(
                f"structured outputs need exactly one of {', '.join(KINDS)} (got {what})",
                param="structured_outputs",
            )
        if self.choice is not None:
            if (
                not isinstance(self.choice, tuple)
                or not self.choice
                or not all(isinstance(c, str) for c in self.choice)
            ):
                raise InvalidRequestError("choice must be a non-empty list of strings", param="choice")
        for name in ("regex", "grammar", "structural_tag", "whitespace_pattern"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or (not value and name != "regex")):
                raise InvalidRequestError(f"{name} must be a non-empty string", param=name)
        if self.json is not None and not isinstance(self.json, dict | bool):
            raise InvalidRequestError("the JSON schema must be an object (or a boolean)", param="json")
        if self.backend is not None and self.backend not in BACKENDS:
            raise InvalidRequestError(
                f"structured outputs backend {self.backend!r} is not available here "
                f"(choose one of {', '.join(BACKENDS)})",
                param="backend",
            )

    @property
    def kind(self) -> str:
        """Which of KINDS this is."""
        return next(k for k in KINDS if getattr(self, k) not in (None, False))

    @property
    def what(self) -> str:
        """The kind in words, for error messages."""
        return _WHAT[self.kind]

    @property
    def param(self) -> str:
        """The request parameter an error about this constraint names."""
        return "json_schema" if self.kind == "json" else self.kind

    def cache_key(self) -> str:
        """A string identifying what is compiled (equal keys compile to the same grammar)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("backend",)}
        return json.dumps(values, sort_keys=True, default=list)


_WHAT = {
    "json": "JSON schema",
    "json_object": "JSON object grammar",
    "regex": "regular expression",
    "choice": "choice list",
    "grammar": "grammar",
    "structural_tag": "structural tag",
}
_FIELDS = {f.name for f in fields(StructuredOutputs)}


def _schema(value: Any, param: str) -> Any:
    """A JSON schema given as an object or as JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"{param} is not valid JSON: {exc}", param=param) from None
    if not isinstance(value, dict | bool):
        raise InvalidRequestError(f"{param} must be a JSON schema object", param=param)
    return value


def from_structured_outputs(raw: Any, param: str = "structured_outputs") -> StructuredOutputs:
    """vLLM's ``structured_outputs`` object -> StructuredOutputs; unknown keys are a 400."""
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"{param} must be an object", param=param)
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise InvalidRequestError(
            f"unknown field(s) in {param}: {', '.join(unknown)} (known: {', '.join(sorted(_FIELDS))})",
            param=param,
        )
    values = {k: v for k, v in raw.items() if v is not None}
    if "json" in values:
        values["json"] = _schema(values["json"], f"{param}.json")
    if isinstance(values.get("choice"), list):
        values["choice"] = tuple(values["choice"])
    if isinstance(values.get("structural_tag"), dict):
        values["structural_tag"] = json.dumps(values["structural_tag"])
    for flag in ("disable_any_whitespace", "disable_additional_properties", "disable_fallback"):
        if flag in values and not isinstance(values[flag], bool):
            raise InvalidRequestError(f"{param}.{flag} must be a boolean", param=param)
    return StructuredOutputs(**values)


def from_response_format(fmt: Any) -> StructuredOutputs | None:
    """OpenAI's ``response_format`` (plus vLLM's ``structural_tag`` type); ``text`` is None."""
    if not isinstance(fmt, dict):
        raise InvalidRequestError("response_format must be an object", param="response_format")
    kind = fmt.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutputs(json_object=True)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or spec.get("schema") is None:
            raise InvalidRequestError(
                "response_format of type json_schema needs json_schema.schema (the JSON schema)",
                param="response_format",
            )
        return StructuredOutputs(json=_schema(spec["schema"], "response_format.json_schema.schema"))
    if kind == "structural_tag":
        tag = {k: v for k, v in fmt.items() if k != "type"}
        if "format" in tag:  # xgrammar's current form: {"type": "structural_tag", "format": {...}}
            tag = {"type": "structural_tag", **tag}
        return StructuredOutputs(structural_tag=json.dumps(tag))
    raise InvalidRequestError(
        f"response_format type {kind!r} is not one of text, json_object, json_schema, structural_tag",
        param="response_format",
    )


def parse_request(req: Any) -> StructuredOutputs | None:
    """The constraint a request asks for, from whichever of the spellings it used, or None.

    Reads ``response_format``, ``structured_outputs``, ``guided_*`` and
    ``guided_decoding_backend`` by name (missing attributes are fine). Two spellings at once
    are a 400 rather than one silently winning.
    """
    found: list[tuple[str, StructuredOutputs]] = []
    fmt = getattr(req, "response_format", None)
    if fmt is not None:
        parsed = from_response_format(fmt)
        if parsed is not None:
            found.append(("response_format", parsed))
    raw = getattr(req, "structured_outputs", None)
    if raw is not None:
        found.append(("structured_outputs", from_structured_outputs(raw)))
    legacy = {new: getattr(req, old, None) for old, new in _LEGACY.items()}
    legacy = {k: v for k, v in legacy.items() if v is not None}
    backend = getattr(req, "guided_decoding_backend", None)
    if legacy:
        names = ", ".join(f"guided_{k}" for k in legacy)
        log.warning("%s: deprecated, use structured_outputs instead (vLLM's new name)", names)
        found.append((names, from_structured_outputs(legacy, "guided_*")))
    if backend is not None:
        log.warning("guided_decoding_backend: deprecated, use --structured-outputs-backend")
    if len(found) > 1:
        raise InvalidRequestError(
            f"give one way of constraining the output, not several ({', '.join(n for n, _ in found)})",
            param=found[1][0].split(",")[0],
        )
    if not found:
        return None
    spec = found[0][1]
    if backend is not None:
        spec = replace(spec, backend=_backend_name(backend))
    return spec


def _backend_name(name: Any) -> str:
    if name == "llguidance":
        return "guidance"
    if not isinstance(name, str) or name not in BACKENDS:
        raise InvalidRequestError(
            f"guided_decoding_backend {name!r} is not available (choose one of {', '.join(BACKENDS)})",
            param="guided_decoding_backend",
        )
    return name
