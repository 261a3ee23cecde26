"""load_tokenizer returns what AutoTokenizer would, for every model the project serves."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from llmserve.sources import packs
from llmserve.sources.tokenizer import declared_class, load_tokenizer

TEXT = "Hello <|im_start|> wörld 123 [SEP] <|endoftext|>\n\tdef f(x): return x"


@pytest.mark.parametrize(
    "name, direct",
    [("smollm2", True), ("minilm", True), ("qwen2.5-coder-0.5b", False), ("whisper-tiny.en", False)],
)
def test_the_same_tokenizer_as_auto_tokenizer(name, direct):
    model_dir = packs.ensure_model(name)
    ours, auto = load_tokenizer(model_dir), AutoTokenizer.from_pretrained(model_dir)
    assert (declared_class(model_dir) is not None) == direct  # qwen2 and whisper go through AutoTokenizer
    assert type(ours) is type(auto)
    assert ours(TEXT).input_ids == auto(TEXT).input_ids
    assert ours.all_special_tokens == auto.all_special_tokens
    assert ours.decode(auto(TEXT).input_ids) == auto.decode(auto(TEXT).input_ids)


def test_a_model_type_auto_tokenizer_overrides_is_left_to_it(tmp_path, smollm2_dir):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((smollm2_dir / name).read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "phi3"}))
    assert declared_class(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert declared_class(tmp_path).__name__ == "TokenizersBackend"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "X", "auto_map": {}}))
    assert declared_class(tmp_path) is None


def test_a_transformers_without_the_rules_leaves_it_to_auto_tokenizer(monkeypatch, smollm2_dir):
    from transformers.models.auto import tokenization_auto

    monkeypatch.delattr(tokenization_auto, "MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS")
    assert declared_class(smollm2_dir) is None
    assert type(load_tokenizer(smollm2_dir)) is type(AutoTokenizer.from_pretrained(smollm2_dir))
