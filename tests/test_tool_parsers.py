"""Every tool parser on fixtures of its models' real output: whole, in 1-character and in
1-token chunks, with the same result, OpenAI's delta shape, and malformed text kept as content."""

from __future__ import annotations

import json

import pytest
from parser_streams import char_chunks, load, stream, token_chunks

from llmserve.parsers.plugin import TOOL_PARSERS
from llmserve.plugins import load_plugins

CASES = load("tool_calls.json")
IDS = [f"{i}-{case['parser']}" for i, case in enumerate(CASES)]


def _parser(case):
    return TOOL_PARSERS[case["parser"]](tools=case.get("tools"))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_chunking_gives_the_fixture_result(case, tok):
    expected = (case["content"], "", [tuple(call) for call in case["calls"]])
    results = {}
    for how, chunks in {
        "whole": [case["text"]],
        "chars": char_chunks(case["text"]),
        "tokens": token_chunks(case["text"], tok),
    }.items():
        parser = _parser(case)
        got = stream(parser, chunks)
        assert got.summary() == expected, how
        assert [(c.name, c.arguments) for c in parser.calls] == [tuple(c) for c in case["calls"]]
        assert [c.id for c in parser.calls] == [c["id"] for c in got.calls]
        results[how] = got
    for call in results["chars"].calls:
        json.loads(call["arguments"])  # always valid JSON, even when cut short
    if case.get("ids"):
        assert [c["id"] for c in results["whole"].calls] == case["ids"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_extract_matches_streaming(case):
    content, calls = _parser(case).extract(case["text"])
    assert content == case["content"]
    assert [(c.name, c.arguments) for c in calls] == [tuple(c) for c in case["calls"]]


def test_every_format_has_fixtures_and_malformed_cases_exist():
    assert {case["parser"] for case in CASES} == set(TOOL_PARSERS)
    assert len(TOOL_PARSERS) >= 16
    assert sum(1 for case in CASES if case.get("malformed")) >= 4
    assert sum(1 for case in CASES if case.get("truncated")) >= 2


def test_parsers_are_registered_through_the_hook():
    registered = load_plugins(fresh=True).tool_parsers()
    assert set(TOOL_PARSERS) <= set(registered)
    assert all(registered[name].plugin == "parsers" for name in TOOL_PARSERS)


def test_arguments_stream_before_the_call_ends():
    parser = TOOL_PARSERS["hermes"]()
    text = (
        '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Boston, MA", "unit": "c"}}'
    )
    pieces = [parser.feed(ch) for ch in text]
    argument_pieces = [d for p in pieces for d in p.tool_calls if d.name is None and d.arguments]
    assert len(argument_pieces) > 5  # streamed as written, not at the end


def test_text_before_a_call_is_not_held_back():
    parser = TOOL_PARSERS["hermes"]()
    assert parser.feed("Sure, let me check").content == "Sure, let me check"
    assert parser.feed(" <tool_").content == " "  # only a possible partial tag waits
    assert parser.feed("x>").content == "<tool_x>"


def test_several_calls_in_one_feed_all_come_out():
    parser = TOOL_PARSERS["hermes"]()
    one = '<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>'
    delta = parser.feed(one + "\n" + one.replace('"a"', '"b"'))
    assert [(d.index, d.name, d.arguments) for d in delta.tool_calls] == [
        (0, "a", '{"x": 1}'),
        (1, "b", '{"x": 1}'),
    ]


def test_non_ascii_arguments_are_kept_as_written():
    parser = TOOL_PARSERS["hermes"]()
    _, calls = parser.extract(
        '<tool_call>{"name": "f", "arguments": {"city": "Zürich", "emoji": "☀"}}</tool_call>'
    )
    assert calls[0].arguments == '{"city": "Zürich", "emoji": "☀"}'


def test_arguments_follow_the_tool_schema():
    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "parameters": {
                    "properties": {
                        "n": {"type": "integer"},
                        "s": {"type": "string"},
                        "ok": {"type": "boolean"},
                        "o": {"type": "object"},
                    }
                },
            },
        }
    ]
    text = ("<tool_call>\n<function=f>\n<parameter=n>\n7\n</parameter>\n<parameter=s>\n7\n</parameter>\n"
            '<parameter=ok>\nTrue\n</parameter>\n<parameter=o>\n{"a": [1]}\n</parameter>\n</function>\n</tool_call>')  # fmt: skip
    _, calls = TOOL_PARSERS["qwen3_coder"](tools=tools).extract(text)
    assert json.loads(calls[0].arguments) == {"n": 7, "s": "7", "ok": True, "o": {"a": [1]}}


@pytest.mark.parametrize(
    "name, text",
    [
        ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": 1,, }}\n</tool_call>'),
        ("hermes", "<tool_call>"),
        ("mistral", "[TOOL_CALLS]"),
        ("deepseek_v3", "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function"),
        ("kimi_k2", "<|tool_calls_section_begin|>garbage"),
        ("glm45", "<tool_call>"),
        ("qwen3_coder", "<tool_call>\n<function=f>\n<parameter=a>\n1"),
        ("pythonic", "[f(a=1, b=[1, 2"),
        ("openai", '<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"a": tru'),
        ("auto", '```json\n{"name": "f", "arguments": {"a": "x'),
    ],
)
def test_cut_or_broken_output_never_raises(name, text, tok):
    results = set()
    for chunks in ([text], char_chunks(text), token_chunks(text, tok)):
        got = stream(TOOL_PARSERS[name](), chunks)
        for call in got.calls:
            json.loads(call["arguments"])
        results.add(repr(got.summary()))
    assert len(results) == 1
