"""llguidance: the second backend, for what xgrammar does not implement (``whitespace_pattern``,
JSON schema keywords xgrammar would ignore). It refuses keywords it does not implement itself, so
a schema neither backend follows is a 400 rather than unconstrained output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmserve.engine.constraints import Constraint, ConstraintSpec
from llmserve.errors import InvalidRequestError
from llmserve.structured.request import StructuredOutputs


class GuidanceConstraint(Constraint):
    """One sequence's llguidance matcher."""

    __slots__ = ("matcher", "_fill")

    def __init__(self, matcher: Any, fill: Any) -> None:
        self.matcher = matcher
        self._fill = fill

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        self._fill(self.matcher, bitmask, row)

    def accept(self, token_id: int) -> bool:
        return bool(self.matcher.consume_token(token_id))

    def is_terminated(self) -> bool:
        # stopped: the grammar is complete and can take nothing more (the end token included)
        return bool(self.matcher.is_stopped())


class GuidanceSpec(ConstraintSpec):
    """A validated llguidance grammar; each sequence gets its own matcher."""

    def __init__(self, tokenizer: Any, grammar: str, description: str) -> None:
        self.tokenizer = tokenizer
        self.grammar = grammar
        self.description = description

    def new(self) -> Constraint:
        import llguidance
        import llguidance.numpy

        matcher = llguidance.LLMatcher(self.tokenizer, self.grammar)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return GuidanceConstraint(matcher, llguidance.numpy.fill_next_token_bitmask)

    def __repr__(self) -> str:
        return f"GuidanceSpec({self.description})"


class GuidanceBackend:
    """Compiles StructuredOutputs for one model's vocabulary with llguidance."""

    name = "guidance"

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        import llguidance
        import llguidance.hf

        self._ll = llguidance
        eos = list(stop_token_ids) or None
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)

    def unsupported(self, spec: StructuredOutputs) -> str | None:
        """Why llguidance cannot take ``spec`` (None when it can)."""
        if spec.kind == "structural_tag":
            return "structural_tag is supported by the xgrammar backend only"
        return None

    def compile(self, spec: StructuredOutputs, schema: Any = None) -> GuidanceSpec:
        """Build and validate the grammar of ``spec``; a 400 naming the problem if it is bad."""
        reason = self.unsupported(spec)
        if reason is not None:
            raise InvalidRequestError(reason, param="structured_outputs")
        try:
            grammar = self._grammar(spec, schema)
            is_error, messages = self._ll.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        except Exception as exc:
            raise InvalidRequestError(
                f"invalid {spec.what} for structured outputs: {exc}", param=spec.param
            ) from None
        if is_error:
            problem = "; ".join(m.strip() for m in messages) or "rejected by llguidance"
            raise InvalidRequestError(
                f"invalid {spec.what} for structured outputs: {problem}", param=spec.param
            )
        return GuidanceSpec(self.tokenizer, grammar, f"guidance {spec.kind}")

    def _grammar(self, spec: StructuredOutputs, schema: Any) -> str:
        ll, kind = self._ll, spec.kind
        if kind in ("json", "json_object"):
            schema = {"type": "object"} if kind == "json_object" else schema
            overrides = {"whitespace_pattern": spec.whitespace_pattern} if spec.whitespace_pattern else None
            defaults = {"whitespace_flexible": not spec.disable_any_whitespace}
            text = json.dumps(schema if schema is not True else {})
            return ll.LLMatcher.grammar_from_json_schema(text, defaults=defaults, overrides=overrides)
        if kind == "regex":
            return ll.grammar_from("regex", spec.regex)
        if kind == "choice":
            return ll.grammar_from("choice", json.dumps(list(spec.choice)))
        return ll.grammar_from("grammar", spec.grammar)  # Lark, or GBNF converted
