"""Every reasoning parser on its models' real output conventions, in every chunking."""

from __future__ import annotations

import pytest
from parser_streams import char_chunks, load, stream, token_chunks

from llmserve.parsers.plugin import REASONING_PARSERS
from llmserve.plugins import load_plugins

CASES = load("reasoning.json")
IDS = [f"{i}-{case['parser']}" for i, case in enumerate(CASES)]


def _parser(case):
    return REASONING_PARSERS[case["parser"]](chat_template_kwargs=case.get("kwargs"))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_chunking_gives_the_fixture_result(case, tok):
    expected = (case["content"], case["reasoning"] or "", [])
    for chunks in ([case["text"]], char_chunks(case["text"]), token_chunks(case["text"], tok)):
        assert stream(_parser(case), chunks).summary() == expected
    assert _parser(case).extract(case["text"]) == (case["reasoning"], case["content"])


def test_every_reasoning_parser_has_fixtures_and_is_registered():
    assert {case["parser"] for case in CASES} == set(REASONING_PARSERS)
    assert len(REASONING_PARSERS) >= 8
    registered = load_plugins(fresh=True).reasoning_parsers()
    assert all(registered[name].plugin == "parsers" for name in REASONING_PARSERS)


def test_reasoning_streams_as_it_is_written():
    parser = REASONING_PARSERS["deepseek_r1"]()
    assert parser.feed("<think>\nFirst").reasoning == "First"
    assert parser.feed(" step, then").reasoning == " step, then"
    assert parser.feed(" done.\n</thi").reasoning == " done."  # whitespace and a partial tag wait
    delta = parser.feed("nk>\n\nAnswer")
    assert (delta.reasoning, delta.content) == ("", "Answer")


def test_end_marker_tells_structured_outputs_where_to_start():
    from llmserve.parsers.reasoning.think import DeepSeekR1ReasoningParser, Qwen3ReasoningParser

    assert DeepSeekR1ReasoningParser().end_marker == "</think>"
    assert Qwen3ReasoningParser(chat_template_kwargs={"enable_thinking": False}).end_marker is None
