"""The installed pack registers its parser through the entry point, and the parser works."""

from __future__ import annotations

import json

from llmserve.api import ParserPipeline
from llmserve.plugins import load_plugins

TEXT = 'Let me check. <<call get_weather {"city": "Zürich"}>> <<call get_time {"tz": "CET"}>>'


def _parser_class():
    registered = load_plugins(fresh=True).tool_parsers()["angle-calls"]
    assert registered.plugin == "example-parser"
    return registered.obj


def _stream(chunks):
    pipeline = ParserPipeline(None, _parser_class()())
    content, calls = "", {}
    for delta in [pipeline.feed(chunk) for chunk in chunks] + [pipeline.finish()]:
        content += delta.content
        for call in delta.tool_calls:
            if call.name is not None:
                calls[call.index] = [call.name, ""]
            calls[call.index][1] += call.arguments
    return content, [tuple(c) for c in calls.values()], pipeline.finish_reason("stop")


def test_the_parser_is_found_and_parses_streamed_and_whole_text():
    expected = (
        "Let me check. ",
        [("get_weather", '{"city": "Zürich"}'), ("get_time", '{"tz": "CET"}')],
        "tool_calls",
    )
    assert _stream([TEXT]) == expected
    assert _stream(list(TEXT)) == expected


def test_text_that_only_looks_like_a_call_stays_content():
    for text in ("a << b", "<<call 42>>", "<<call get_weather Paris>>"):
        assert _stream(list(text)) == (text, [], "stop")


def test_a_call_cut_short_is_closed_as_json():
    content, calls, _ = _stream(list('<<call get_weather {"city": "Zür'))
    assert (content, calls) == ("", [("get_weather", '{"city": "Zür"}')])
    assert json.loads(calls[0][1]) == {"city": "Zür"}
