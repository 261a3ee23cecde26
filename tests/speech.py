"""Speech fixtures for the Whisper tests: espeak-ng clips of known sentences and a word error rate."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me tomorrow morning at nine o'clock.",
    "The weather today is sunny with a light breeze from the west.",
    "We need to buy milk, bread and eggs from the store.",
    "She opened the window and looked at the mountains.",
]

ESPEAK_MISSING = "espeak-ng is not installed (apt-get install -y espeak-ng)"


def espeak(text: str, path: Path, speed: int = 175, voice: str = "en-us") -> Path:
    """Synthesise ``text`` to a WAV file (22.05 kHz mono 16-bit) with espeak-ng (its default
    speed; the US voice, on which tiny.en did best here)."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        pytest.skip(ESPEAK_MISSING)
    subprocess.run(
        [binary, "-v", voice, "-s", str(speed), "-w", str(path), text], check=True, capture_output=True
    )
    return path


def words(text: str) -> list[str]:
    """Lower-case words without punctuation ("o'clock" stays one word)."""
    return re.findall(r"[a-z0-9']+", text.lower().replace("-", " "))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, by edit distance over words."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(len(ref), 1)


def save_as_transformers(ct2_dir: Path, out_dir: Path) -> Path:
    """Write a CTranslate2 Whisper's weights as a transformers directory (config.json,
    model.safetensors, generation_config.json with the suppress lists, the tokenizer), the layout
    of an ``openai/whisper-*`` download."""
    import json

    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from llmserve.backends.torch.ct2_reader import read_ct2
    from llmserve.backends.torch.whisper import Whisper
    from llmserve.backends.torch.whisper_hf import _hf_names

    ours = Whisper.from_ct2(read_ct2(ct2_dir))
    cfg = ours.cfg
    ct2_config = json.loads((ct2_dir / "config.json").read_text())
    with torch.device("meta"):  # no random init: every tensor is assigned below
        hf = WhisperForConditionalGeneration(
            WhisperConfig(
                vocab_size=cfg.vocab_size,
                num_mel_bins=cfg.n_mels,
                d_model=cfg.d_model,
                encoder_layers=cfg.encoder_layers,
                decoder_layers=cfg.decoder_layers,
                encoder_attention_heads=cfg.n_heads,
                decoder_attention_heads=cfg.n_heads,
                encoder_ffn_dim=cfg.ffn,
                decoder_ffn_dim=cfg.ffn,
                max_source_positions=cfg.n_audio_ctx,
                max_target_positions=cfg.n_text_ctx,
            )
        )
    state = {}
    for name, value in ours.named_parameters():
        sources = _hf_names(name)
        for source, part in zip(sources, value.detach().chunk(len(sources)), strict=True):
            state["model." + source if source != "proj_out.weight" else source] = part.clone()
    state["model.encoder.embed_positions.weight"] = ours.encoder.positions.clone()
    state["model.decoder.embed_positions.weight"] = ours.decoder.positions.clone()
    state = {k: v for k, v in state.items() if not k.endswith("k_proj.bias")}
    hf.load_state_dict(state, strict=True, assign=True)
    hf.tie_weights()
    hf.save_pretrained(out_dir)
    generation = {
        "suppress_tokens": ct2_config["suppress_ids"],
        "begin_suppress_tokens": ct2_config["suppress_ids_begin"],
    }
    (out_dir / "generation_config.json").write_text(json.dumps(generation))
    (out_dir / "tokenizer.json").write_bytes((ct2_dir / "tokenizer.json").read_bytes())
    return out_dir
