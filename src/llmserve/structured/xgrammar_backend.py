"""xgrammar: one ``GrammarCompiler`` (with its cache) per model, one ``GrammarMatcher`` per sequence.

Compiling happens on the structured-outputs executor of the API process; the matchers then run on
the engine's step thread, filling their rows of the step's bitmask in place (xgrammar takes the
engine's numpy int32 rows as they are, in its own packing).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmserve.engine.constraints import Constraint, ConstraintSpec
from llmserve.errors import InvalidRequestError
from llmserve.structured.request import StructuredOutputs
from llmserve.structured.schema import XGRAMMAR_IGNORES, xgrammar_ignored_keyword

_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+?:\d+: (Check failed: \(.*?\) is false: )?")


def error_text(exc: BaseException) -> str:
    """xgrammar's message without its C++ source location (the client needs the problem only)."""
    lines = [_LOG_PREFIX.sub("", line).strip() for line in str(exc).splitlines()]
    return " ".join(line for line in lines if line) or type(exc).__name__


def looks_like_lark(grammar: str) -> bool:
    """EBNF (GBNF) rules are written ``name ::= ...``; Lark's ``name: ...``."""
    return "::=" not in grammar


class XGrammarConstraint(Constraint):
    """One sequence's matcher."""

    __slots__ = ("matcher",)

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> bool:
        return bool(self.matcher.accept_token(token_id))

    def is_terminated(self) -> bool:
        return bool(self.matcher.is_terminated())


class XGrammarSpec(ConstraintSpec):
    """A compiled grammar; each sequence gets a fresh matcher of it."""

    def __init__(self, compiled: Any, description: str) -> None:
        self.compiled = compiled
        self.description = description

    def new(self) -> Constraint:
        import xgrammar

        return XGrammarConstraint(xgrammar.GrammarMatcher(self.compiled))

    def __repr__(self) -> str:
        return f"XGrammarSpec({self.description})"


class XGrammarBackend:
    """Compiles StructuredOutputs for one model's vocabulary with xgrammar."""

    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        import xgrammar

        self._xgr = xgrammar
        self.info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids) or None
        )
        threads = max(1, min(8, os.cpu_count() or 1))
        self.compiler = xgrammar.GrammarCompiler(self.info, max_threads=threads, cache_enabled=True)

    def unsupported(self, spec: StructuredOutputs) -> str | None:
        """Why xgrammar cannot follow ``spec`` exactly (None when it can)."""
        if spec.whitespace_pattern is not None:
            return "whitespace_pattern is supported by the guidance backend only"
        if spec.json is not None:
            keyword = xgrammar_ignored_keyword(spec.json)
            if keyword is not None:
                return f"the xgrammar backend does not support the JSON schema keyword {keyword!r}"
        return None

    def compile(self, spec: StructuredOutputs, schema: Any = None) -> XGrammarSpec:
        """Compile ``spec`` (``schema``: its JSON schema after the request's transforms)."""
        reason = self.unsupported(spec)
        if reason is not None:
            raise InvalidRequestError(reason, param="structured_outputs")
        try:
            compiled = self._compile(spec, schema)
        except InvalidRequestError:
            raise
        except Exception as exc:  # xgrammar reports every bad input as an exception
            raise InvalidRequestError(
                f"invalid {spec.what} for structured outputs: {error_text(exc)}", param=spec.param
            ) from None
        return XGrammarSpec(compiled, f"xgrammar {spec.kind}")

    def _compile(self, spec: StructuredOutputs, schema: Any) -> Any:
        c = self.compiler
        any_ws = not spec.disable_any_whitespace
        kind = spec.kind
        if kind == "json":
            if schema is True:
                return c.compile_builtin_json_grammar()
            return c.compile_json_schema(json.dumps(schema), any_whitespace=any_ws)
        if kind == "json_object":
            return c.compile_json_schema('{"type": "object"}', any_whitespace=any_ws)
        if kind == "regex":
            return c.compile_regex(spec.regex)
        if kind == "choice":
            alternatives = " | ".join(json.dumps(choice, ensure_ascii=False) for choice in spec.choice)
            return c.compile_grammar(f"root ::= {alternatives}")
        if kind == "grammar":
            grammar = spec.grammar
            return c.compile_lark(grammar) if looks_like_lark(grammar) else c.compile_grammar(grammar)
        return self._structural_tag(spec.structural_tag)

    def _structural_tag(self, text: str) -> Any:
        try:
            tag = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(
                f"structural_tag is not valid JSON: {exc}", param="structural_tag"
            ) from None
        if not isinstance(tag, dict):
            raise InvalidRequestError("structural_tag must be a JSON object", param="structural_tag")
        if "structures" in tag:  # vLLM's first form: {"structures": [{begin, schema, end}], "triggers"}
            try:
                items = [
                    self._xgr.StructuralTagItem(
                        begin=s["begin"], schema=json.dumps(s.get("schema", {})), end=s["end"]
                    )
                    for s in tag["structures"]
                ]
                triggers = list(tag["triggers"])
            except (KeyError, TypeError) as exc:
                raise InvalidRequestError(
                    f"structural_tag needs structures [{{begin, schema, end}}] and triggers: {exc!r}",
                    param="structural_tag",
                ) from None
            return self.compiler.compile_structural_tag(items, triggers)
        return self.compiler.compile_structural_tag(tag)


__all__ = ["XGRAMMAR_IGNORES", "XGrammarBackend", "XGrammarConstraint", "XGrammarSpec", "error_text"]
