"""The reasoning -> tools pipeline: what the chat route gets for one choice."""

from __future__ import annotations

import json

from parser_streams import char_chunks, stream, token_chunks

from llmserve.parsers.pipeline import ParserPipeline
from llmserve.parsers.plugin import REASONING_PARSERS, TOOL_PARSERS

QWEN3 = (
    "<think>\nThe user wants the weather. I could write "
    '<tool_call>{"name": "get_current_weather", "arguments": {}}</tool_call> but first I think.\n</think>\n\n'
    'Checking.\n<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Paris"}}\n</tool_call>'
)


def _pipeline(**kwargs):
    return ParserPipeline(REASONING_PARSERS["qwen3"](), TOOL_PARSERS["hermes"](), **kwargs)


def test_a_call_inside_the_reasoning_is_not_a_tool_call(tok):
    results = set()
    for chunks in ([QWEN3], char_chunks(QWEN3), token_chunks(QWEN3, tok)):
        pipeline = _pipeline()
        got = stream(pipeline, chunks)
        assert got.reasoning.startswith("The user wants") and "<tool_call>" in got.reasoning
        assert got.content == "Checking.\n"
        assert [(c["name"], c["arguments"]) for c in got.calls] == [
            ("get_current_weather", '{"location": "Paris"}')
        ]
        assert pipeline.finish_reason("stop") == "tool_calls"
        results.add(repr(got.summary()))
    assert len(results) == 1


def test_extract_gives_the_message_fields():
    out = _pipeline().extract(QWEN3)
    assert out.content == "Checking.\n" and out.reasoning.endswith("first I think.")
    assert [c.to_dict()["function"] for c in out.tool_calls] == [
        {"name": "get_current_weather", "arguments": '{"location": "Paris"}'}
    ]
    only_calls = ParserPipeline(None, TOOL_PARSERS["hermes"]()).extract(QWEN3.split("Checking.\n")[1])
    assert only_calls.content is None and only_calls.reasoning is None


def test_tool_choice_none_never_parses_calls():
    pipeline = _pipeline(tool_choice="none")
    out = pipeline.extract(QWEN3)
    assert out.tool_calls == [] and "<tool_call>" in out.content
    assert pipeline.finish_reason("stop") == "stop"


def test_parallel_tool_calls_false_keeps_one_call():
    text = "".join(f'<tool_call>{{"name": "f", "arguments": {{"i": {i}}}}}</tool_call>' for i in range(3))
    pipeline = ParserPipeline(None, TOOL_PARSERS["hermes"](), parallel_tool_calls=False)
    got = stream(pipeline, char_chunks(text))
    assert [(c["name"], c["arguments"]) for c in got.calls] == [("f", '{"i": 0}')]
    assert [(c.name, c.arguments) for c in pipeline.tool_calls] == [("f", '{"i": 0}')]


def test_named_and_required_tool_choice_read_the_constrained_output():
    named = ParserPipeline(
        None, None, tool_choice={"type": "function", "function": {"name": "get_current_weather"}}
    )
    got = stream(named, char_chunks('{"location": "Zürich"}'))
    assert [(c["name"], c["arguments"]) for c in got.calls] == [
        ("get_current_weather", '{"location": "Zürich"}')
    ]
    required = ParserPipeline(None, TOOL_PARSERS["hermes"](), tool_choice="required")
    out = required.extract('[{"name": "a", "parameters": {"x": 1}}, {"name": "b", "parameters": {}}]')
    assert [(c.name, c.arguments) for c in out.tool_calls] == [("a", '{"x": 1}'), ("b", "{}")]


def test_hitting_max_tokens_inside_a_call_closes_it():
    pipeline = _pipeline()
    got = stream(pipeline, char_chunks(QWEN3[: QWEN3.index("Paris") + 3]))
    assert json.loads(got.calls[0]["arguments"]) == {"location": "Par"}
    assert pipeline.finish_reason("length") == "length"


def test_gpt_oss_needs_both_parsers_and_special_tokens():
    text = (
        "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
        'to=functions.get_current_weather <|constrain|>json<|message|>{"location":"Tokyo"}<|call|>'
    )
    pipeline = ParserPipeline(REASONING_PARSERS["openai_gptoss"](), TOOL_PARSERS["openai"]())
    assert pipeline.needs_special_tokens
    out = pipeline.extract(text)
    assert (out.reasoning, out.content) == ("Need the weather.", None)
    assert [(c.name, c.arguments) for c in out.tool_calls] == [
        ("get_current_weather", '{"location":"Tokyo"}')
    ]
