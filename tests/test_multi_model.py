"""Several models in one server, sleep mode, priority scheduling and request chat templates,
through a real server and the official openai SDK."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import openai
import pytest
from conftest import ServerProcess

KEY = "sk-multi"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if reasoning_effort is defined %}effort={{ reasoning_effort }}\n{% endif %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_qwen2(path, tokenizer_dir) -> None:
    """A small random Qwen2 model that shares SmolLM2's tokenizer."""
    import torch
    import transformers

    config = transformers.Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=49152, max_position_embeddings=1024,
        eos_token_id=2, bos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, path / name)


@pytest.fixture(scope="module")
def multi(smollm2_dir, minilm_dir, tmp_path_factory):
    tiny = tmp_path_factory.mktemp("tiny-qwen2")
    make_tiny_qwen2(tiny, smollm2_dir)
    template = tmp_path_factory.mktemp("tpl") / "effort.jinja"
    template.write_text(TEMPLATE)
    proc = ServerProcess(
        str(smollm2_dir), f"tiny={tiny}", f"mini={minilm_dir}", "--served-model-name", SMOL,
        "--embedding-model", "none", "--api-key", KEY, "--enable-sleep-mode",
        "--scheduling-policy", "priority", "--max-model-len", "512", "--kv-cache-space", "0.5",
        "--trust-request-chat-template", "--default-chat-template-kwargs", '{"greeting": "bonjour"}',
        "--exclude-tools-when-tool-choice-none",
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(multi):
    return openai.OpenAI(base_url=multi.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def test_models_lists_every_served_model(client):
    assert [m.id for m in client.models.list().data] == [SMOL, "tiny", "mini"]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_both_generative_models_answer_in_parallel(multi, client):
    async def run():
        aclient = openai.AsyncOpenAI(base_url=multi.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        calls = [
            aclient.completions.create(
                model=name,
                prompt="The capital of France is",
                max_tokens=8,
                temperature=0,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            for name in (SMOL, "tiny", SMOL, "tiny")
        ]
        return await asyncio.gather(*calls)

    outs = asyncio.run(run())
    assert [o.model for o in outs] == [SMOL, "tiny", SMOL, "tiny"]
    assert all(o.usage.completion_tokens == 8 for o in outs)
    assert outs[0].choices[0].text == outs[2].choices[0].text  # greedy: same model, same text
    assert outs[1].choices[0].text == outs[3].choices[0].text
    assert outs[0].choices[0].text != outs[1].choices[0].text  # a different model answered
    default = client.completions.create(model="default", prompt="The capital of France is", max_tokens=8,
                                        temperature=0, extra_body={"ignore_eos": True})  # fmt: skip
    assert default.choices[0].text == outs[0].choices[0].text and default.model == SMOL


def test_unknown_model_and_wrong_kind(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="nope", prompt="hi", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="Embeddings API"):
        client.embeddings.create(model="tiny", input="hi")
    assert len(client.embeddings.create(model="mini", input="hi").data[0].embedding) == 384


def test_priority_is_accepted_under_the_priority_policy(client):
    out = client.completions.create(model="tiny", prompt="hi", max_tokens=2, extra_body={"priority": -5})
    assert out.choices[0].finish_reason in ("length", "stop")


def test_request_chat_template_and_reasoning_effort(multi):
    messages = [{"role": "user", "content": "Hi"}]
    rendered = httpx.post(
        multi.url + "/v1/chat/completions/render",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "tiny", "messages": messages, "chat_template": TEMPLATE, "reasoning_effort": "high"},
    )
    assert rendered.status_code == 200, rendered.text
    assert "effort=high" in rendered.json()["prompt"]


def test_sleep_needs_the_key_and_frees_then_restores(multi, client):
    url = multi.url
    assert httpx.post(url + "/sleep").status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    ask = dict(
        model=SMOL,
        prompt="The capital of France is",
        max_tokens=6,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    before = client.completions.create(**ask).choices[0].text
    for level in (1, 2):
        assert httpx.post(url + "/sleep", params={"level": level}, headers=auth).status_code == 200
        try:
            assert httpx.get(url + "/is_sleeping", headers=auth).json() == {"is_sleeping": True}
            with pytest.raises(openai.InternalServerError) as err:
                client.completions.create(**ask)
            assert err.value.status_code == 503
            metrics = httpx.get(url + "/metrics").text
            assert 'llmserve:num_requests_running{model_name="tiny"} 0.0' in metrics
        finally:
            assert httpx.post(url + "/wake_up", headers=auth).status_code == 200
        assert httpx.get(url + "/is_sleeping", headers=auth).json() == {"is_sleeping": False}
        assert client.completions.create(**ask).choices[0].text == before
    bad = httpx.post(url + "/sleep", params={"level": 3}, headers=auth)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "level"


def test_default_template_kwargs_and_tools_left_out_for_tool_choice_none(multi):
    template = (
        "{{ greeting }}{% if tools %} TOOLS{% endif %}{% for m in messages %} {{ m.content }}{% endfor %}"
    )
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "chat_template": template,
            "tools": [tool], "max_tokens": 1, "return_token_ids": True}  # fmt: skip
    prompts = {}
    for choice in ("none", "required"):
        out = httpx.post(multi.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                         json={**body, "tool_choice": choice}, timeout=60)  # fmt: skip
        assert out.status_code == 200, out.text
        ids = out.json()["prompt_token_ids"]
        text = httpx.post(multi.url + "/detokenize", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "tiny", "tokens": ids}).json()["prompt"]  # fmt: skip
        prompts[choice] = text
    assert prompts["none"].startswith("bonjour") and "TOOLS" not in prompts["none"]
    assert "TOOLS" in prompts["required"]
