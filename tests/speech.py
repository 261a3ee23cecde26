"""Speech fixtures for the Whisper tests: espeak-ng clips of known sentences and a word error rate."""

from __future__ import annotations

import itertools
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

# About 70 s spoken: more than two of Whisper's 30 s windows, no sentence repeated.
PASSAGE = " ".join(
    [
        "Every morning the baker opens his shop before the sun comes up.",
        "He mixes flour, water and salt in a large wooden bowl.",
        "While the dough rises, he sweeps the floor and cleans the windows.",
        "The first customers arrive at seven and ask for warm bread.",
        "A young teacher buys two rolls and a cup of coffee.",
        "An old man orders a cake for his granddaughter's birthday.",
        "At noon the street becomes busy with cars and bicycles.",
        "Children walk home from school and stop to look at the cookies.",
        "In the afternoon the baker rests for an hour in his garden.",
        "He grows tomatoes, beans and a few small apple trees.",
        "Later he writes a list of everything he needs for the next day.",
        "His daughter helps him count the money and close the shop.",
        "They talk about the weather and about a trip to the sea.",
        "The evening is quiet, and the lights in the houses go on one by one.",
        "Before he goes to sleep, the baker reads a chapter of his favourite book.",
        "Then he sets his alarm clock for four o'clock and turns off the lamp.",
        "On Sundays the shop stays closed and the family visits the market.",
        "They buy fresh fish, green vegetables and a bunch of yellow flowers.",
        "After lunch they walk along the river and feed the ducks.",
        "In winter the town is covered with snow and the bread smells even better.",
    ]
)

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


class Decoding:
    """Windows decoded straight on a Transcriber, with KV blocks from the engine's BlockManager
    (as ``TranscriptionService`` hands them out), one candidate per window."""

    def __init__(self, runner, num_blocks: int = 128, block_size: int = 16) -> None:
        from llmserve.engine.kv_cache import BlockManager

        self.runner = runner
        self.blocks = BlockManager(num_blocks, block_size, enable_prefix_caching=False)
        runner.allocate_kv_cache(num_blocks, block_size)
        self.ids = itertools.count()

    def begin(self, starts) -> list[tuple[object, int]]:
        """(sequence, first token) per start."""
        seqs = []
        for start in starts:
            seq = _Seq(next(self.ids))
            seq.num_tokens = self.runner.prompt_len(start)
            self.blocks.allocate(seq, [], seq.num_tokens)
            start.seq_ids, start.block_tables = [seq.seq_id], [seq.block_table]
            seqs.append(seq)
        begun = self.runner.begin(starts)
        return [(seq, window.tokens[0]) for seq, window in zip(seqs, begun, strict=True)]

    def advance(self, seqs) -> list[int]:
        for seq in seqs:
            if not self.blocks.grow(seq, seq.num_tokens + 1):
                raise RuntimeError("out of KV blocks")
            seq.num_tokens += 1
        return self.runner.advance([s.seq_id for s in seqs], [s.block_table for s in seqs])

    def release(self, seq) -> None:
        self.blocks.free(seq)
        self.runner.release([seq.seq_id])

    def greedy(self, mel, timestamps: bool = False, language: str | None = None) -> list[int]:
        """One window's greedy tokens, without end-of-text."""
        from llmserve.backends.base import TranscriptionStart

        runner = self.runner
        ((seq, token),) = self.begin([TranscriptionStart(mel, language=language, timestamps=timestamps)])
        out = [token]
        while out[-1] != runner.eot and len(out) < runner.max_tokens:
            out += self.advance([seq])
        self.release(seq)
        assert self.blocks.num_free_blocks == self.blocks.num_blocks
        return out[:-1] if out[-1] == runner.eot else out


class _Seq:
    def __init__(self, seq_id: int) -> None:
        self.seq_id, self.block_table, self.num_registered_blocks, self.num_tokens = seq_id, [], 0, 0


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
