"""/v1/chat/completions on a real server (SmolLM2), through the official openai SDK."""

from __future__ import annotations

import httpx
import openai
import pytest

from llmserve.protocols.openai.schemas import ChatCompletionResponse

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France?"},
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def greedy(client, model):
    return client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=6, temperature=0)


def prompt_len(tok, messages, **kwargs) -> int:
    text = tok.apply_chat_template(messages, tokenize=False, **kwargs)
    return len(tok(text, add_special_tokens=False).input_ids)


def test_basic_chat_and_exact_usage(greedy, tok):
    assert greedy.object == "chat.completion" and greedy.id.startswith("chatcmpl-")
    message = greedy.choices[0].message
    assert message.role == "assistant" and message.content
    assert greedy.usage.prompt_tokens == prompt_len(tok, MESSAGES, add_generation_prompt=True)
    assert greedy.usage.completion_tokens == len(tok(message.content, add_special_tokens=False).input_ids)
    assert greedy.usage.total_tokens == greedy.usage.prompt_tokens + greedy.usage.completion_tokens


def test_content_parts_equal_string_content(client, model, greedy):
    parts = [
        MESSAGES[0],
        {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]},
    ]
    out = client.chat.completions.create(model=model, messages=parts, max_tokens=6, temperature=0)
    assert out.choices[0].message.content == greedy.choices[0].message.content
    assert out.usage.prompt_tokens == greedy.usage.prompt_tokens


def test_developer_role_and_n(client, model, tok):
    messages = [{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "Hi"}]
    out = client.chat.completions.create(
        model=model, messages=messages, max_tokens=3, n=2, temperature=0.8, seed=7
    )
    assert [c.index for c in out.choices] == [0, 1]
    assert out.usage.prompt_tokens == prompt_len(tok, messages, add_generation_prompt=True)


def test_max_completion_tokens(client, model):
    out = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_completion_tokens=2,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert out.usage.completion_tokens == 2 and out.choices[0].finish_reason == "length"


def test_logprobs(client, model, greedy):
    out = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2
    )
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    assert "".join(entry.token for entry in content) == out.choices[0].message.content
    for entry in content:
        assert entry.bytes == list(entry.token.encode("utf-8"))
        assert len(entry.top_logprobs) == 2
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-4)


def test_stream_role_content_finish_and_usage(client, model, greedy):
    stream = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert (
        "".join(c.choices[0].delta.content or "" for c in with_choices) == greedy.choices[0].message.content
    )
    assert with_choices[-1].choices[0].finish_reason == greedy.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == greedy.usage.model_dump()


async def test_async_stream_n2_with_continuous_usage(server, model):
    async with openai.AsyncOpenAI(base_url=server + "/v1", api_key="unused", max_retries=0) as aclient:
        stream = await aclient.chat.completions.create(
            model=model,
            messages=MESSAGES,
            max_tokens=3,
            n=2,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
        )
        roles, finished, texts = set(), set(), {0: "", 1: ""}
        async for chunk in stream:
            assert chunk.usage is not None
            for choice in chunk.choices:
                if choice.delta.role:
                    roles.add(choice.index)
                texts[choice.index] += choice.delta.content or ""
                if choice.finish_reason:
                    finished.add(choice.index)
        assert roles == finished == {0, 1}
        assert texts[0] == texts[1] != ""


def test_continue_final_message_with_echo(client, model, tok):
    partial = "The capital of France is"
    messages = [
        {"role": "user", "content": "Tell me about France."},
        {"role": "assistant", "content": partial},
    ]
    out = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=3,
        temperature=0,
        extra_body={"continue_final_message": True, "add_generation_prompt": False, "echo": True},
    )
    assert out.choices[0].message.content.startswith(partial)
    assert len(out.choices[0].message.content) > len(partial)
    assert out.usage.prompt_tokens == prompt_len(tok, messages, continue_final_message=True)


def test_both_generation_prompt_and_continue_is_400(client, model):
    with pytest.raises(openai.BadRequestError, match="continue_final_message"):
        client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=2, extra_body={"continue_final_message": True}
        )


def test_auto_tool_choice_needs_the_flags(client, model):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model, messages=MESSAGES, tools=[WEATHER_TOOL], max_tokens=2)
    assert "--enable-auto-tool-choice and --tool-call-parser" in err.value.message


def test_image_parts_are_400(client, model):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError, match="multimodal"):
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": [{"type": "text", "text": "What?"}, image]}]
        )


def rendered(url: str, tok, **body) -> tuple[str, dict]:
    """POST a chat request asking for the prompt's token ids; returns (decoded prompt, response)."""
    body = {"messages": MESSAGES, "max_tokens": 2, "temperature": 0, "return_token_ids": True, **body}
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    data = response.json()
    return tok.decode(data["prompt_token_ids"]), data


def test_prompt_token_ids_and_newline_joined_parts(server, tok):
    two_parts = [
        {"role": "user", "content": [{"type": "text", "text": "ab"}, {"type": "text", "text": "cd"}]}
    ]
    prompt, data = rendered(server, tok, messages=two_parts)
    # SmolLM2's template wants string content: text parts are joined with newlines, like vLLM
    assert "<|im_start|>user\nab\ncd<|im_end|>" in prompt
    assert data["usage"]["prompt_tokens"] == len(data["prompt_token_ids"])
    assert len(data["choices"][0]["token_ids"]) == data["usage"]["completion_tokens"]


def test_named_tool_choice_returns_a_tool_call(client, model):
    out = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=3,
        temperature=0,
    )
    choice = out.choices[0]
    assert len(choice.message.tool_calls) == 1 and choice.finish_reason in ("stop", "length")
    call = choice.message.tool_calls[0]
    assert (
        call.function.name == "get_weather"
        and call.id.startswith("chatcmpl-tool-")
        and call.type == "function"
    )
    with pytest.raises(openai.BadRequestError, match="does not match any of the specified `tools`"):
        client.chat.completions.create(
            model=model,
            messages=MESSAGES,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "other"}},
        )


def test_named_tool_choice_streams_tool_call_deltas(client, model):
    stream = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=3,
        temperature=0,
        stream=True,
    )
    deltas = [c.choices[0].delta.tool_calls for c in stream if c.choices and c.choices[0].delta.tool_calls]
    assert deltas and deltas[0][0].function.name == "get_weather" and deltas[0][0].id
    assert all(d[0].index == 0 for d in deltas)


def test_response_matches_the_documented_schema(server, model):
    body = {
        "model": model,
        "messages": MESSAGES,
        "max_tokens": 2,
        "n": 2,
        "logprobs": True,
        "top_logprobs": 1,
    }
    body.update(return_token_ids=True, prompt_logprobs=0, tools=[WEATHER_TOOL])
    body["tool_choice"] = {"type": "function", "function": {"name": "get_weather"}}
    parsed = ChatCompletionResponse.model_validate(
        httpx.post(server + "/v1/chat/completions", json=body, timeout=120).json()
    )
    assert len(parsed.choices) == 2 and parsed.choices[1].message.tool_calls
    assert len(parsed.prompt_logprobs) == len(parsed.prompt_token_ids) == parsed.usage.prompt_tokens


def test_required_tool_choice_is_allowed_without_auto_tool_flags(client, model):
    out = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_tokens=2,
        temperature=0,
    )
    assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_parallel_tool_calls_false_keeps_one_call():
    from llmserve.api import ParserPipeline

    text = '[{"name": "a", "parameters": {"x": 1}}, {"name": "b", "parameters": {}}]'
    both = ParserPipeline(tool_choice="required").extract(text).tool_calls
    one = ParserPipeline(tool_choice="required", parallel_tool_calls=False).extract(text).tool_calls
    assert [c.name for c in both] == ["a", "b"]
    assert [c.name for c in one] == ["a"] and one[0].arguments == '{"x": 1}'
