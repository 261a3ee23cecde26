"""llmserve.protocols.shared and the model registry: what every protocol plugin shares (no server)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from pydantic import BaseModel

from llmserve.errors import InvalidRequestError, ModelNotFoundError, UnsupportedError
from llmserve.protocols.openai.schemas import ChatCompletionRequest, CompletionRequest
from llmserve.protocols.shared.parsing import parse_json
from llmserve.protocols.shared.prompts import parse_prompts
from llmserve.protocols.shared.sampling import to_sampling_params
from llmserve.protocols.shared.sse import sse
from llmserve.protocols.shared.streams import merge_streams
from llmserve.server.registry import ModelRegistry, ServedModel


def req(**fields):
    return SimpleNamespace(**fields)


def test_request_values_win_over_generation_config_defaults():
    defaults = {"temperature": 0.6, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.1}
    params = to_sampling_params(req(temperature=0.0, top_k=None), defaults, max_model_len=100, prompt_len=10)
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty) == (0.0, 0.9, 50, 1.1)
    plain = to_sampling_params(req(), {}, 100, 10)
    assert (plain.temperature, plain.top_p, plain.top_k) == (1.0, 1.0, 0)


def test_max_tokens_resolution():
    assert to_sampling_params(req(max_tokens=5, max_completion_tokens=7), {}, 100, 10).max_tokens == 7
    assert to_sampling_params(req(max_tokens=5), {}, 100, 10).max_tokens == 5
    assert to_sampling_params(req(), {}, 100, 10).max_tokens == 90  # fill the context
    assert to_sampling_params(req(), {"max_tokens": 20}, 100, 10).max_tokens == 20
    assert to_sampling_params(req(), {"max_tokens": 200}, 100, 10).max_tokens == 90


def test_vllm_extras_stop_logprobs_and_bias():
    chat = ChatCompletionRequest.model_validate(
        {
            "messages": [{"role": "user", "content": "x"}],
            "stop": "END",
            "logprobs": True,
            "top_logprobs": 3,
            "logit_bias": {"42": 5},
            "min_p": 0.1,
            "min_tokens": 2,
            "ignore_eos": True,
            "stop_token_ids": [7],
            "seed": 3,
            "skip_special_tokens": False,
        }
    )
    params = to_sampling_params(chat, {}, 100, 10)
    assert params.stop == ["END"] and params.logprobs == 3 and params.logit_bias == {42: 5.0}
    assert (params.min_p, params.min_tokens, params.ignore_eos, params.stop_token_ids) == (0.1, 2, True, [7])
    assert params.seed == 3 and params.skip_special_tokens is False
    legacy = CompletionRequest.model_validate({"prompt": "x", "logprobs": 0, "echo": True})
    assert to_sampling_params(legacy, {}, 100, 10, prompt_logprobs=0).logprobs == 0
    assert to_sampling_params(legacy, {}, 100, 10).max_tokens == 16


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
        ({"n": 0}, "n"),
    ],
)
def test_bad_sampling_values_name_the_field(fields, param):
    with pytest.raises(InvalidRequestError) as err:
        to_sampling_params(req(**fields), {}, 100, 10)
    assert err.value.param == param


def test_parse_json_errors():
    class Body(BaseModel):
        n: int
        tags: list[str] = []

    assert parse_json(b'{"n": 2}', Body).n == 2
    for raw, param in [(b"{", None), (b"[]", None), (b"", None), (b'{"n": NaN}', None), (b'{"n": "x"}', "n")]:
        with pytest.raises(InvalidRequestError) as err:
            parse_json(raw, Body)
        assert err.value.param == param
    with pytest.raises(InvalidRequestError, match=r"tags\[1\]") as err:
        parse_json(b'{"n": 1, "tags": ["a", 2]}', Body)
    assert err.value.param == "tags"


class _Tok:
    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[len(t)] * 2 for t in texts]}


def test_prompt_forms():
    tok = _Tok()
    assert [p.token_ids for p in parse_prompts("abc", tok)] == [[3, 3]]
    assert [p.token_ids for p in parse_prompts(["a", "bb"], tok)] == [[1, 1], [2, 2]]
    assert [p.token_ids for p in parse_prompts([5, 6, 7], tok)] == [[5, 6, 7]]
    mixed = parse_prompts([[1, 2], "xyz"], tok)
    assert [(p.token_ids, p.text) for p in mixed] == [([1, 2], None), ([3, 3], "xyz")]
    kept = parse_prompts([1, 2, 3, 4], tok, truncate_prompt_tokens=2, max_model_len=10)
    assert kept[0].token_ids == [3, 4]
    for bad in ([], None, 3, {"a": 1}, [1, "a"], [True, False], [[]]):
        with pytest.raises(InvalidRequestError):
            parse_prompts(bad, tok)
    with pytest.raises(InvalidRequestError, match="greater than max_model_len"):
        parse_prompts([1, 2], tok, truncate_prompt_tokens=20, max_model_len=10)


def _served(name, kind, aliases=()):
    engine = SimpleNamespace() if kind == "generate" else None
    embedder = SimpleNamespace() if kind == "embed" else None
    return ServedModel(name, "/m", kind, None, 64, engine=engine, embedder=embedder, aliases=aliases)


def test_model_for():
    chat, other, emb = _served("m", "generate", ("m2",)), _served("q", "generate"), _served("e", "embed")
    models = ModelRegistry([chat, other, emb])
    assert (
        models.model_for(None) is chat and models.model_for("m2") is chat and models.model_for("q") is other
    )
    assert models.model_for("", "embed") is emb and models.model_for("default") is chat
    assert models.model_for("default", "embed") is emb and models.model_for(None, None) is chat
    assert chat.answer_name("m2") == "m2" and chat.answer_name("default") == "m"
    with pytest.raises(ModelNotFoundError, match="The model `x` does not exist."):
        models.model_for("x")
    with pytest.raises(UnsupportedError, match="does not support the Embeddings API"):
        models.model_for("m", "embed")
    with pytest.raises(UnsupportedError, match="No model serving embed"):
        ModelRegistry([chat]).model_for(None, "embed")
    with pytest.raises(ValueError, match="used twice"):
        models.add(_served("m2", "generate"))


def test_sse_encoding():
    assert sse({"a": "é"}) == 'data: {"a":"é"}\n\n'


async def test_merge_streams_interleaves_and_closing_closes_every_stream():
    closed = []

    async def stream(name, delays):
        try:
            for i, delay in enumerate(delays):
                await asyncio.sleep(delay)
                yield f"{name}{i}"
        finally:
            closed.append(name)

    items = [item async for item in merge_streams([stream("a", [0.0, 0.05]), stream("b", [0.02])])]
    assert items == [(0, "a0"), (1, "b0"), (0, "a1")] and sorted(closed) == ["a", "b"]

    closed.clear()
    merged = merge_streams([stream("a", [0.0, 10]), stream("b", [10])])
    assert await merged.__anext__() == (0, "a0")
    await merged.aclose()  # what a client disconnect does
    assert sorted(closed) == ["a", "b"]


async def test_heartbeat_fills_silence_and_closes_the_stream():
    from llmserve.protocols.shared.sse import HEARTBEAT, with_heartbeat

    closed = []

    async def events():
        try:
            yield "data: 1\n\n"
            await asyncio.sleep(0.35)
            yield "data: 2\n\n"
            await asyncio.sleep(10)
        finally:
            closed.append(True)

    beat = with_heartbeat(events(), 0.1)
    got = [await beat.__anext__() for _ in range(5)]
    assert got[0] == "data: 1\n\n" and got.count(HEARTBEAT) >= 2 and "data: 2\n\n" in got
    await beat.aclose()
    assert closed == [True]
