"""Whisper from transformers' safetensors layout: encoder output and decoder logits equal to
transformers' own ``WhisperForConditionalGeneration`` on a tiny random model, and the real tiny.en
weights written in that layout transcribe token for token as from CTranslate2's model.bin."""

from __future__ import annotations

import json

import pytest
import torch
from speech import SENTENCES, Decoding, espeak, save_as_transformers
from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperModel

from llmserve.backends.torch.audio_features import chunk_features
from llmserve.backends.torch.whisper_hf import load_hf_whisper
from llmserve.engine.audio_input import decode_audio
from llmserve.sources import packs
from llmserve.sources.speech import is_ct2_whisper_dir, is_hf_whisper_dir, is_whisper_dir

TINY = dict(
    vocab_size=320,
    d_model=64,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=192,
    decoder_ffn_dim=192,
    max_target_positions=64,
    decoder_start_token_id=1,
    pad_token_id=0,
    bos_token_id=0,
    eos_token_id=2,
)


def _perturbed(model):
    """Random weights, biases and norms moved off their init, so a missing one shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


@pytest.mark.parametrize("cls", [WhisperForConditionalGeneration, WhisperModel])
def test_encoder_and_decoder_match_transformers(cls, tmp_path):
    theirs = _perturbed(cls(WhisperConfig(**TINY)))
    theirs.save_pretrained(tmp_path)
    assert is_hf_whisper_dir(tmp_path) and is_whisper_dir(tmp_path) and not is_ct2_whisper_dir(tmp_path)
    ours = load_hf_whisper(tmp_path)
    mel = torch.randn(2, 80, 3000)
    tokens = torch.randint(0, TINY["vocab_size"], (2, 12))
    with torch.no_grad():
        base = theirs if cls is WhisperModel else theirs.model
        encoded = base.encoder(mel).last_hidden_state
        torch.testing.assert_close(ours.encoder(mel), encoded, atol=1e-5, rtol=1e-4)
        logits = ours(mel, tokens)
        if cls is WhisperModel:  # no head of its own: Whisper's output layer is the embedding
            hidden = theirs(input_features=mel, decoder_input_ids=tokens).last_hidden_state
            expected = hidden @ theirs.decoder.embed_tokens.weight.T
        else:
            expected = theirs(input_features=mel, decoder_input_ids=tokens).logits
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
        assert logits.abs().max() > 0.5  # not trivially zero


def test_unsupported_configs_are_refused(tmp_path):
    WhisperModel(WhisperConfig(**{**TINY, "decoder_attention_heads": 2})).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="decoder_attention_heads"):
        load_hf_whisper(tmp_path)


def test_real_weights_in_the_transformers_layout_decode_as_from_model_bin(tmp_path):
    from llmserve.backends.torch.whisper_runner import WhisperRunner

    ct2_dir = packs.ensure_model("whisper-tiny.en")
    hf_dir = save_as_transformers(ct2_dir, tmp_path / "hf")
    assert json.loads((hf_dir / "config.json").read_text())["model_type"] == "whisper"
    from_bin = Decoding(WhisperRunner(str(ct2_dir), max_windows=1))
    from_hf = Decoding(WhisperRunner(str(hf_dir), max_windows=1))
    assert from_hf.runner.tokens == from_bin.runner.tokens
    for i, sentence in enumerate(SENTENCES[:2]):
        mel = chunk_features(decode_audio(espeak(sentence, tmp_path / f"{i}.wav").read_bytes()))[0][2]
        tokens = from_hf.greedy(mel, timestamps=True, language="en")
        assert tokens == from_bin.greedy(mel, timestamps=True, language="en") and len(tokens) > 5
