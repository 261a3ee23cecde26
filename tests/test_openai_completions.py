"""/v1/completions on a real server (SmolLM2), through the official openai SDK."""

from __future__ import annotations

import httpx
import openai
import pytest

from llmserve.protocols.openai.schemas import CompletionResponse

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def greedy(client, model):
    """The greedy 8-token completion of PROMPT, used as the reference by several tests."""
    return client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)


def test_string_prompt_usage_is_exact(greedy, tok):
    choice = greedy.choices[0]
    assert greedy.object == "text_completion" and greedy.id.startswith("cmpl-")
    assert choice.text and choice.index == 0
    assert greedy.usage.prompt_tokens == len(tok(PROMPT).input_ids)
    completion_tokens = len(tok(choice.text, add_special_tokens=False).input_ids)
    assert greedy.usage.completion_tokens == 8 == completion_tokens
    assert choice.finish_reason == "length"
    assert greedy.usage.total_tokens == greedy.usage.prompt_tokens + 8


def test_default_max_tokens_is_16(client, model):
    out = client.completions.create(
        model=model, prompt="Once upon a time", temperature=0, extra_body={"ignore_eos": True}
    )
    assert out.usage.completion_tokens == 16


def test_token_id_prompts_match_the_string_prompt(client, model, greedy, tok):
    ids = tok(PROMPT).input_ids
    single = client.completions.create(model=model, prompt=ids, max_tokens=8, temperature=0)
    assert single.choices[0].text == greedy.choices[0].text
    batch = client.completions.create(
        model=model, prompt=[ids, tok("Hello").input_ids], max_tokens=8, temperature=0
    )
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.choices[0].text == greedy.choices[0].text
    assert batch.usage.prompt_tokens == len(ids) + len(tok("Hello").input_ids)


def test_list_of_prompts_with_n_indexes_like_vllm(client, model, greedy, tok):
    prompts = [PROMPT, "1, 2, 3,"]
    out = client.completions.create(model=model, prompt=prompts, n=2, max_tokens=8, temperature=0)
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    by_index = {c.index: c.text for c in out.choices}
    # choice index = prompt_index * n + j; greedy choices of one prompt agree
    assert by_index[0] == by_index[1] == greedy.choices[0].text
    assert by_index[2] == by_index[3] != by_index[0]
    assert out.usage.prompt_tokens == sum(len(tok(p).input_ids) for p in prompts)
    assert out.usage.completion_tokens == 4 * 8


def test_echo_and_logprobs(client, model, greedy, tok):
    out = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=3, temperature=0, echo=True, logprobs=2
    )
    choice = out.choices[0]
    assert choice.text.startswith(PROMPT)
    assert greedy.choices[0].text.startswith(choice.text[len(PROMPT) :])
    lp = choice.logprobs
    prompt_len = len(tok(PROMPT).input_ids)
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == prompt_len + 3
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    assert "".join(lp.tokens) == choice.text


def test_logprobs_shape(client, model, greedy):
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == 4 and "".join(lp.tokens) == out.choices[0].text
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert token in top and top[token] == pytest.approx(logprob)
        assert 1 <= len(top) <= 4
        # greedy: the chosen token is the most likely one
        assert logprob == pytest.approx(max(top.values()), abs=1e-4)


def test_stop_string(client, model, greedy):
    text = greedy.choices[0].text
    word = text.split()[1]  # a word from the middle of the greedy text
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0, stop=[word])
    choice = out.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.text == text[: text.index(word)]
    assert choice.model_extra["stop_reason"] == word
    kept = client.completions.create(
        model=model,
        prompt=PROMPT,
        max_tokens=8,
        temperature=0,
        stop=word,
        extra_body={"include_stop_str_in_output": True},
    )
    assert kept.choices[0].text == text[: text.index(word) + len(word)]


def test_seed_makes_sampling_reproducible(client, model):
    kwargs = dict(model=model, prompt="Write a word:", max_tokens=8, temperature=1.0, seed=1234)
    first = client.completions.create(**kwargs)
    second = client.completions.create(**kwargs)
    assert first.choices[0].text == second.choices[0].text


def test_stream_with_usage_options(client, model, greedy):
    stream = client.completions.create(
        model=model,
        prompt=PROMPT,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )
    chunks = list(stream)
    with_choices = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in with_choices) == greedy.choices[0].text
    assert with_choices[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    # continuous usage: every chunk counts the tokens so far
    counts = [c.usage.completion_tokens for c in with_choices]
    assert counts == sorted(counts) and counts[-1] == 8
    final = chunks[-1]
    assert final.choices == [] and final.usage.model_dump() == greedy.usage.model_dump()


def test_stream_without_usage_has_no_usage_chunk(client, model):
    chunks = list(
        client.completions.create(model=model, prompt=PROMPT, max_tokens=3, temperature=0, stream=True)
    )
    assert all(c.choices and c.usage is None for c in chunks)


async def test_async_client_streams_several_prompts(server, model, greedy):
    async with openai.AsyncOpenAI(base_url=server + "/v1", api_key="unused", max_retries=0) as aclient:
        stream = await aclient.completions.create(
            model=model, prompt=[PROMPT, PROMPT], max_tokens=8, temperature=0, stream=True, echo=True
        )
        texts: dict[int, str] = {}
        async for chunk in stream:
            for choice in chunk.choices:
                texts[choice.index] = texts.get(choice.index, "") + choice.text
        assert texts == {0: PROMPT + greedy.choices[0].text, 1: PROMPT + greedy.choices[0].text}
        plain = await aclient.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)
        assert plain.choices[0].text == greedy.choices[0].text


def test_greedy_matches_transformers(smollm2_dir, client, model, tok):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        generated = ref.generate(ids, max_new_tokens=4, do_sample=False)
    expected = generated[0, ids.shape[1] :].tolist()
    out = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=4, temperature=0, extra_body={"return_token_ids": True}
    )
    assert out.choices[0].model_extra["token_ids"] == expected


def test_response_matches_the_documented_schema(server, model):
    body = {"model": model, "prompt": [PROMPT, "Hi"], "max_tokens": 2, "n": 2, "logprobs": 1, "echo": True}
    body.update(prompt_logprobs=1, return_token_ids=True)
    response = httpx.post(server + "/v1/completions", json=body, timeout=60)
    parsed = CompletionResponse.model_validate(response.json())
    assert len(parsed.choices) == 4 and all(c.prompt_logprobs[0] is None for c in parsed.choices)
    assert parsed.choices[0].prompt_logprobs[1]  # {token_id: {logprob, rank, decoded_token}}


def test_request_id_names_the_response_and_length_penalty_is_refused(client, model):
    out = client.completions.create(model=model, prompt="Hi", max_tokens=1, extra_body={"request_id": "abc"})
    assert out.id == "cmpl-abc"
    with pytest.raises(openai.BadRequestError, match="length_penalty"):
        client.completions.create(model=model, prompt="Hi", max_tokens=1, extra_body={"length_penalty": 0.5})
