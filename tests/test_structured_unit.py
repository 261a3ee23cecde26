"""Structured outputs without a server: request parsing, schema checks, compiling with both
backends, the compile timeout, the reasoning wrapper and the streaming of required tool calls."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from types import SimpleNamespace

import numpy as np
import pytest

from llmserve.api import (
    Constraint,
    ConstraintSpec,
    InvalidRequestError,
    ParserPipeline,
    StructuredOutputs,
    calls_schema,
)
from llmserve.engine.constraints import allowed_token_ids
from llmserve.structured import StructuredOutputCompiler, parse_request
from llmserve.structured.reasoning import AfterMarker
from llmserve.structured.schema import check_schema, without_additional_properties


def req(**fields):
    return SimpleNamespace(**fields)


def test_the_three_spellings_give_one_spec(caplog):
    schema = {"type": "object"}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    assert parse_request(req(response_format=fmt)) == StructuredOutputs(json=schema)
    assert parse_request(req(structured_outputs={"json": json.dumps(schema)})) == StructuredOutputs(
        json=schema
    )
    with caplog.at_level(logging.WARNING, "llmserve.structured"):
        legacy = parse_request(req(guided_choice=["a", "b"], guided_decoding_backend="guidance"))
    assert legacy == StructuredOutputs(choice=("a", "b"), backend="guidance")
    assert "deprecated" in caplog.text and "guided_choice" in caplog.text
    assert parse_request(req(guided_regex="a+")) == StructuredOutputs(regex="a+")
    assert parse_request(req(guided_grammar='root ::= "a"')) == StructuredOutputs(grammar='root ::= "a"')
    assert parse_request(req(guided_json='{"type": "integer"}')) == StructuredOutputs(
        json={"type": "integer"}
    )
    assert parse_request(req(response_format={"type": "text"})) is None
    assert parse_request(req()) is None


@pytest.mark.parametrize(
    "fields,words",
    [
        ({"structured_outputs": {}}, "exactly one"),
        ({"structured_outputs": {"regex": "a", "json": {}}}, "exactly one"),
        ({"structured_outputs": {"choice": "ab"}}, "list of strings"),
        ({"structured_outputs": {"json": 3}}, "JSON schema"),
        ({"structured_outputs": {"regex": "a", "disable_any_whitespace": "yes"}}, "boolean"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "json_schema.schema"),
        ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "not several"),
    ],
)
def test_malformed_requests_are_400(fields, words):
    with pytest.raises(InvalidRequestError, match=words):
        parse_request(req(**fields))


def test_schema_checks():
    check_schema({"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}}})
    for bad, words in [
        (
            {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
            "self-referential",
        ),
        ({"$ref": "#/$defs/none"}, "points nowhere"),
        ({"$ref": "https://example.invalid/s.json"}, "only local"),
        (False, "allows no output"),
    ]:
        with pytest.raises(InvalidRequestError, match=words):
            check_schema(bad)
    closed = without_additional_properties({"type": "object", "properties": {"a": {"type": "object"}}})
    assert (
        closed["additionalProperties"] is False and closed["properties"]["a"]["additionalProperties"] is False
    )


@pytest.fixture(scope="module")
def compiler(tok):
    return StructuredOutputCompiler(tok, 49152, [tok.eos_token_id])


def walk(spec: ConstraintSpec, tok, text: str, vocab: int = 49152) -> Constraint:
    """Feed ``text``'s tokens through a fresh constraint, checking each was allowed by the mask."""
    constraint = spec.new()
    mask = np.full((1, -(-vocab // 32)), -1, dtype=np.int32)
    for token in tok.encode(text, add_special_tokens=False):
        mask[:] = -1
        constraint.fill_bitmask(mask, 0)
        assert token in allowed_token_ids(mask, 0, vocab)
        assert constraint.accept(token)
    return constraint


@pytest.mark.parametrize("backend", ["xgrammar", "guidance"])
def test_both_backends_follow_a_schema_and_end_with_eos(compiler, tok, backend):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    spec = compiler.compile_now(StructuredOutputs(json=schema, backend=backend))
    constraint = walk(spec, tok, '{"a": 12}')
    mask = np.full((1, 1536), -1, dtype=np.int32)
    constraint.fill_bitmask(mask, 0)
    if not constraint.is_terminated():  # xgrammar: only the end token is left, and it ends the grammar
        assert list(allowed_token_ids(mask, 0, 49152)) == [tok.eos_token_id]
        assert constraint.accept(tok.eos_token_id) and constraint.is_terminated()
    assert not spec.new().accept(tok.encode("x", add_special_tokens=False)[0])  # not JSON


def test_auto_sends_what_xgrammar_ignores_to_guidance(compiler):
    assert compiler.choose(StructuredOutputs(json={"type": "array", "uniqueItems": True})) == "guidance"
    assert compiler.choose(StructuredOutputs(json_object=True, whitespace_pattern=" ")) == "guidance"
    assert compiler.choose(StructuredOutputs(json={"type": "array"})) == "xgrammar"
    assert compiler.compile_now(StructuredOutputs(regex="a+")) is compiler.compile_now(
        StructuredOutputs(regex="a+")
    )


def test_a_slow_compile_is_a_400(tok, monkeypatch):
    slow = StructuredOutputCompiler(tok, 49152, [tok.eos_token_id], timeout=0.1)
    monkeypatch.setattr(slow, "compile_now", lambda spec: time.sleep(1))
    with pytest.raises(InvalidRequestError, match="took longer than 0.1 s"):
        asyncio.run(slow.compile(StructuredOutputs(regex="a")))
    slow.close()


class _Digits(Constraint):
    def __init__(self):
        self.accepted = []

    def fill_bitmask(self, bitmask, row):
        bitmask[row] = 0
        bitmask[row, 0] = 0b1110

    def accept(self, token_id):
        self.accepted.append(token_id)
        return token_id in (1, 2, 3)

    def is_terminated(self):
        return len(self.accepted) == 2


class _DigitsSpec(ConstraintSpec):
    def new(self):
        return _Digits()


def test_after_marker_leaves_reasoning_free():
    constraint = AfterMarker(_DigitsSpec(), [7, 8]).new()
    mask = np.full((1, 2), -1, dtype=np.int32)
    for token in (9, 7, 5, 7, 8):  # free until the marker 7, 8 is complete
        constraint.fill_bitmask(mask, 0)
        assert mask.all() and constraint.accept(token) and not constraint.is_terminated()
    constraint.fill_bitmask(mask, 0)
    assert list(allowed_token_ids(mask, 0, 64)) == [1, 2, 3]
    assert constraint.accept(2) and constraint.accept(3) and constraint.is_terminated()


def test_reasoning_budget_forces_the_rest_of_the_marker():
    constraint = AfterMarker(None, [7, 8, 9], budget=3).new()
    mask = np.full((1, 2), -1, dtype=np.int32)
    for token in (1, 2, 7):  # within budget: free (the last one happens to begin the marker)
        constraint.fill_bitmask(mask, 0)
        assert mask.all() and constraint.accept(token)
    for forced in (8, 9):  # over budget: the marker's remaining tokens, one at a time
        mask[:] = -1
        constraint.fill_bitmask(mask, 0)
        assert list(allowed_token_ids(mask, 0, 64)) == [forced]
        assert constraint.accept(forced)
    mask[:] = -1
    constraint.fill_bitmask(mask, 0)  # past the marker, no inner constraint: free again
    assert mask.all() and not constraint.is_terminated()


CALLS = '[{"name": "f", "parameters": {"s": "a\\"}", "n": [1, {}]}}, {"name":"g","parameters":{ }} ]'


@pytest.mark.parametrize("size", [1, 3, len(CALLS)])
def test_required_calls_stream_name_first_in_any_chunking(size):
    pipeline = ParserPipeline(tool_choice="required")
    calls: dict[int, list] = {}
    pieces = [pipeline.feed(CALLS[i : i + size]) for i in range(0, len(CALLS), size)] + [pipeline.finish()]
    for parsed in pieces:
        for delta in (d.to_dict() for d in parsed.tool_calls):
            entry = calls.setdefault(delta["index"], [None, ""])
            if "name" in delta["function"]:
                assert entry == [None, ""] and delta["id"].startswith("chatcmpl-tool-")
                entry[0] = delta["function"]["name"]
            entry[1] += delta["function"]["arguments"]
    assert [(n, json.loads(a)) for n, a in calls.values()] == [("f", {"s": 'a"}', "n": [1, {}]}), ("g", {})]


def test_required_schema_moves_defs_up():
    tool = {
        "name": "f",
        "parameters": {"$defs": {"x": {"type": "integer"}}, "properties": {"a": {"$ref": "#/$defs/x"}}},
    }
    schema = calls_schema([tool], max_calls=1)
    assert schema["$defs"] == {"x": {"type": "integer"}} and schema["maxItems"] == 1
    check_schema(schema)


def test_a_forced_backend_refuses_what_it_cannot_follow(tok):
    xgr = StructuredOutputCompiler(tok, 49152, [tok.eos_token_id], backend="xgrammar")
    with pytest.raises(
        InvalidRequestError, match="xgrammar backend does not support the JSON schema keyword 'not'"
    ):
        xgr.compile_now(StructuredOutputs(json={"type": "integer", "not": {"const": 1}}))
    with pytest.raises(
        InvalidRequestError, match="whitespace_pattern is supported by the guidance backend only"
    ):
        xgr.compile_now(StructuredOutputs(json_object=True, whitespace_pattern=" "))
    guidance = StructuredOutputCompiler(tok, 49152, [tok.eos_token_id], backend="guidance")
    assert guidance.choose(StructuredOutputs(regex="a")) == "guidance"
    assert type(guidance.compile_now(StructuredOutputs(choice=("a", "b")))).__name__ == "GuidanceSpec"
    with pytest.raises(InvalidRequestError, match="structural_tag is supported by the xgrammar backend only"):
        guidance.compile_now(StructuredOutputs(structural_tag='{"type": "structural_tag", "format": {}}'))
