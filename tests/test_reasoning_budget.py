"""The reasoning budget (vLLM's ``thinking_token_budget``, Anthropic's ``thinking.budget_tokens``)
through a real server: SmolLM2 under a reasoning parser whose template opens the reasoning in the
prompt, so everything it writes is reasoning until the engine makes it write ``</think>``."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
from conftest import ServerProcess

HI = [{"role": "user", "content": "Tell me about the moon."}]
YES_NO = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
            "required": ["answer"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def srv(smollm2_dir):
    proc = ServerProcess(
        "--reasoning-parser", "deepseek_r1", "--embedding-model", "none", "--max-model-len", "512"
    )
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def oai(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=120)


def _chat(oai, **extra):
    return oai.chat.completions.create(model="default", messages=HI, temperature=0, **extra)


def test_without_a_budget_everything_is_reasoning(oai):
    out = _chat(oai, max_tokens=20).choices[0]
    assert out.finish_reason == "length"
    assert out.message.reasoning_content and not out.message.content


def test_the_budget_ends_the_reasoning(oai, tok):
    free = _chat(oai, max_tokens=20).choices[0].message.reasoning_content
    answer = _chat(oai, max_tokens=40, extra_body={"thinking_token_budget": 6})
    reasoning = answer.choices[0].message.reasoning_content
    # greedy: the same first tokens, cut after six, then the forced marker and an answer
    assert free.startswith(reasoning) and reasoning != free
    assert len(tok.encode(reasoning, add_special_tokens=False)) <= 6
    marker = len(tok.encode("</think>", add_special_tokens=False))
    assert answer.usage.completion_tokens > 6 + marker or answer.choices[0].finish_reason == "stop"


def test_budget_and_structured_output_compose(oai):
    answer = _chat(oai, max_tokens=60, response_format=YES_NO, extra_body={"thinking_token_budget": 4})
    message = answer.choices[0].message
    assert message.reasoning_content
    assert json.loads(message.content)["answer"] in ("yes", "no")


def test_a_negative_budget_is_a_400(oai):
    with pytest.raises(openai.BadRequestError, match="thinking_token_budget"):
        _chat(oai, max_tokens=10, extra_body={"thinking_token_budget": -1})


def test_anthropic_budget_tokens(srv, oai):
    sdk = anthropic.Anthropic(base_url=srv.url, api_key="x", max_retries=0, timeout=120)
    reasoning = _chat(oai, max_tokens=40, extra_body={"thinking_token_budget": 6}).choices[0].message
    message = sdk.messages.create(
        model="default", max_tokens=40, messages=HI, thinking={"type": "enabled", "budget_tokens": 6},
        extra_body={"temperature": 0},  # this SDK's create() no longer takes it
    )  # fmt: skip
    assert message.content[0].type == "thinking"
    assert message.content[0].thinking == reasoning.reasoning_content
    with pytest.raises(anthropic.BadRequestError, match="budget_tokens"):
        sdk.messages.create(
            model="default", max_tokens=40, messages=HI, thinking={"type": "enabled", "budget_tokens": 40}
        )


def test_thinking_blocks_are_signed_and_checked_when_passed_back(srv):
    sdk = anthropic.Anthropic(base_url=srv.url, api_key="x", max_retries=0, timeout=120)
    thinking = {"type": "enabled", "budget_tokens": 4}
    first = sdk.messages.create(model="default", max_tokens=12, messages=HI, thinking=thinking)
    block = first.content[0]
    assert block.type == "thinking" and len(block.signature) > 20
    back = {"type": "thinking", "thinking": block.thinking, "signature": block.signature}
    turns = [*HI, {"role": "assistant", "content": [back, {"type": "text", "text": "It is far."}]},
             {"role": "user", "content": "How far?"}]  # fmt: skip
    assert sdk.messages.count_tokens(model="default", messages=turns).input_tokens > 0
    turns[1]["content"][0] = {**back, "thinking": block.thinking + " (edited)"}
    with pytest.raises(anthropic.BadRequestError, match="signature"):
        sdk.messages.count_tokens(model="default", messages=turns)
