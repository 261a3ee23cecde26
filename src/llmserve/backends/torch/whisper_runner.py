"""WhisperRunner: a loaded Whisper and its slot caches, behind the backend's Transcriber contract."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llmserve.backends.base import Transcriber, TranscriptionStart
from llmserve.backends.torch.audio_features import chunk_features
from llmserve.backends.torch.ct2_reader import read_ct2
from llmserve.backends.torch.whisper import Whisper
from llmserve.backends.torch.whisper_alignment import alignment_weights, word_times
from llmserve.backends.torch.whisper_decoding import (
    DecodeState,
    WhisperTokens,
    detect_language,
    no_speech_prob,
    select_tokens,
)
from llmserve.backends.torch.whisper_hf import load_hf_whisper
from llmserve.sources.speech import is_hf_whisper_dir


def load_whisper_tokenizer(model_dir: str | Path):
    """The model's tokenizer.json as a transformers fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(Path(model_dir) / "tokenizer.json"))


def load_whisper(model_dir: str | Path, device) -> Whisper:
    """Whisper in float32 from a CTranslate2 directory or a transformers one."""
    if is_hf_whisper_dir(model_dir):
        return load_hf_whisper(model_dir, torch.float32, device)
    return Whisper.from_ct2(read_ct2(model_dir), torch.float32, device)


def _alignment_heads(model_dir: str | Path, layers: int, heads: int) -> list[tuple[int, int]]:
    """(layer, head) pairs that follow the audio: from config.json (CTranslate2) or
    generation_config.json (transformers); else every head of the upper half, as Whisper does."""
    for name in ("config.json", "generation_config.json"):
        path = Path(model_dir) / name
        found = json.loads(path.read_text()).get("alignment_heads") if path.is_file() else None
        if found:
            return [(int(layer), int(head)) for layer, head in found]
    return [(layer, head) for layer in range(layers // 2, layers) for head in range(heads)]


class WhisperRunner(Transcriber):
    """Encodes windows into free slots and decodes all busy slots one token per step."""

    def __init__(self, model_dir: str, device: str = "cpu", max_slots: int = 8) -> None:
        self.device = torch.device(device)
        self.model = load_whisper(model_dir, self.device)
        cfg = self.model.cfg
        self.cfg = cfg
        self.tokenizer = load_whisper_tokenizer(model_dir)
        self.tokens = WhisperTokens.from_dir(model_dir, self.tokenizer, cfg.vocab_size)
        self.eot = self.tokens.eot
        self.timestamp_begin = self.tokens.timestamp_begin
        self.multilingual = self.tokens.multilingual
        self.languages = tuple(self.tokens.languages) if self.multilingual else ("en",)
        self.max_slots = max_slots
        self.max_tokens = cfg.n_text_ctx // 2  # Whisper's own sample length
        shape = (max_slots, cfg.n_heads, cfg.n_text_ctx, cfg.head_dim)
        cross = (max_slots, cfg.n_heads, cfg.n_audio_ctx, cfg.head_dim)
        self.caches = [(self._zeros(shape), self._zeros(shape)) for _ in range(cfg.decoder_layers)]
        self.crosses = [(self._zeros(cross), self._zeros(cross)) for _ in range(cfg.decoder_layers)]
        self.states: dict[int, DecodeState] = {}
        self.lengths: dict[int, int] = {}  # tokens in the slot's cache
        self._free = list(range(max_slots - 1, -1, -1))
        self.alignment_heads = _alignment_heads(model_dir, cfg.decoder_layers, cfg.n_heads)
        self.word_timestamps = True

    def _zeros(self, shape) -> torch.Tensor:
        return torch.zeros(shape, device=self.device)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def features(self, samples):
        return chunk_features(samples, self.cfg.n_mels)

    @torch.inference_mode()
    def begin(self, starts: list[TranscriptionStart]) -> list[tuple[int, int, str | None]]:
        if len(starts) > len(self._free):
            raise RuntimeError(f"{len(starts)} windows for {len(self._free)} free slots")
        slots = [self._free.pop() for _ in starts]
        mels = torch.stack([torch.as_tensor(s.features) for s in starts]).to(self.device)
        audio = self.model.encoder(mels)  # [n, 1500, D], once per window
        index = torch.tensor(slots, device=self.device)
        for layer, (k, v) in zip(self.model.decoder.layers, self.crosses, strict=True):
            ck, cv = layer.cross_keys_values(audio)
            k[index], v[index] = ck, cv
        out = []
        for slot, start in zip(slots, starts, strict=True):
            language = start.language if self.multilingual else "en"
            if self.multilingual and language is None:
                first = self._forward(slot, [self.tokens.sot], 0)[-1]
                language = detect_language(first, self.tokens)
            prompt = self.tokens.prompt(language, start.task, start.timestamps, start.previous)
            all_logits = self._forward(slot, prompt, 0)
            logits = all_logits[-1]
            generator = None
            if start.temperature > 0:
                generator = torch.Generator().manual_seed(start.seed if start.seed is not None else slot)
            state = DecodeState(start.timestamps, start.temperature, generator=generator)
            sot_index = len(prompt) - 1 - prompt[::-1].index(self.tokens.sot)
            state.no_speech_prob = no_speech_prob(all_logits[sot_index], self.tokens)
            self.states[slot] = state
            self.lengths[slot] = len(prompt)
            out.append((slot, select_tokens(logits[None], [state], self.tokens)[0], language))
        return out

    def _forward(self, slot: int, ids: list[int], offset: int) -> torch.Tensor:
        """Prefill ``ids`` into one slot; the logits after each of them [T, V]."""
        tokens = torch.tensor([ids], device=self.device)
        positions = torch.arange(offset, offset + len(ids), device=self.device)[None]
        crosses = [(k[slot : slot + 1], v[slot : slot + 1]) for k, v in self.crosses]
        slots = torch.tensor([slot], device=self.device)
        return self.model.decoder(tokens, positions, slots, self.caches, crosses)[0]

    @torch.inference_mode()
    def advance(self, slots: list[int]) -> list[int]:
        if not slots:
            return []
        index = torch.tensor(slots, device=self.device)
        last = torch.tensor([[self.states[s].sampled[-1]] for s in slots], device=self.device)
        positions = torch.tensor([[self.lengths[s]] for s in slots], device=self.device)
        crosses = [(k[index], v[index]) for k, v in self.crosses]
        logits = self.model.decoder(last, positions, index, self.caches, crosses)[:, -1]
        for s in slots:
            self.lengths[s] += 1
        return select_tokens(logits, [self.states[s] for s in slots], self.tokens)

    def release(self, slot: int) -> None:
        if self.states.pop(slot, None) is not None:
            self.lengths.pop(slot, None)
            self._free.append(slot)

    def scores(self, slot: int) -> tuple[float, float]:
        state = self.states[slot]
        return state.sum_logprob, state.no_speech_prob

    @torch.inference_mode()
    def align(self, slot: int, text_tokens: list[int], frames: int, language: str | None, task: str):
        prefix = self.tokens.prompt(language if self.multilingual else None, task, False, [])
        crosses = [(k[slot : slot + 1], v[slot : slot + 1]) for k, v in self.crosses]
        tokens = [*prefix, *text_tokens, self.eot]
        weights = alignment_weights(self.model.decoder, tokens, crosses, self.alignment_heads)
        return word_times(weights, self.tokenizer, text_tokens, len(prefix), frames // 2)

    def room(self, slot: int) -> int:
        """Positions left in the slot's cache."""
        return self.cfg.n_text_ctx - self.lengths[slot]
