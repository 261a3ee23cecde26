"""WhisperRunner: a loaded Whisper, its audio slots and its paged KV cache, behind the backend's
Transcriber contract."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from llmserve.backends.base import Transcriber, TranscriptionBegun, TranscriptionStart
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
from llmserve.backends.torch.whisper_paged import copy_blocks, decode_kernel, step_metadata
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


CANDIDATE_SEED_STEP = 1_000_003  # candidate i of a window samples with seed + i * this


@dataclass(slots=True)
class _Sequence:
    window: int  # audio slot
    state: DecodeState
    length: int  # tokens in its KV blocks


class WhisperRunner(Transcriber):
    """Encodes windows into free audio slots and decodes all their sequences one token per step."""

    def __init__(self, model_dir: str, device: str = "cpu", max_windows: int = 8) -> None:
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
        self.max_windows = max_windows
        self.max_positions = cfg.n_text_ctx
        self.max_tokens = cfg.n_text_ctx // 2  # Whisper's own sample length
        cross = (max_windows, cfg.n_heads, cfg.n_audio_ctx, cfg.head_dim)
        self.crosses = [(self._zeros(cross), self._zeros(cross)) for _ in range(cfg.decoder_layers)]
        self.kv_caches: list[torch.Tensor] = []
        self.block_size = 0
        self.kernel = decode_kernel(self.device, torch.float32, cfg.n_heads, cfg.head_dim)
        self.seqs: dict[int, _Sequence] = {}
        self._rows = None  # (windows, gathered crosses) of the last decode batch
        self._free = list(range(max_windows - 1, -1, -1))
        self.alignment_heads = _alignment_heads(model_dir, cfg.decoder_layers, cfg.n_heads)
        self.word_timestamps = True

    def _zeros(self, shape) -> torch.Tensor:
        return torch.zeros(shape, device=self.device)

    @property
    def free_windows(self) -> int:
        return len(self._free)

    def features(self, samples):
        return chunk_features(samples, self.cfg.n_mels)

    def kv_bytes_per_token(self) -> int:
        return self.cfg.decoder_layers * 2 * self.cfg.d_model * 4  # float32 K and V

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        shape = (num_blocks, block_size, 2, self.cfg.n_heads, self.cfg.head_dim)
        self.kv_caches = [self._zeros(shape) for _ in range(self.cfg.decoder_layers)]
        self.block_size = block_size

    def prompt_len(self, start: TranscriptionStart) -> int:
        language = (start.language or "en") if self.multilingual else None
        return len(self.tokens.prompt(language, start.task, start.timestamps, start.previous))

    @torch.inference_mode()
    def begin(self, starts: list[TranscriptionStart]) -> list[TranscriptionBegun]:
        if len(starts) > len(self._free):
            raise RuntimeError(f"{len(starts)} windows for {len(self._free)} free audio slots")
        windows = [self._free.pop() for _ in starts]
        mels = torch.stack([torch.as_tensor(s.features) for s in starts]).to(self.device)
        audio = self.model.encoder(mels)  # [n, 1500, D], once per window
        index = torch.tensor(windows, device=self.device)
        for layer, (k, v) in zip(self.model.decoder.layers, self.crosses, strict=True):
            ck, cv = layer.cross_keys_values(audio)
            k[index], v[index] = ck, cv
        return [self._begin(window, start) for window, start in zip(windows, starts, strict=True)]

    def _begin(self, window: int, start: TranscriptionStart) -> TranscriptionBegun:
        table = start.block_tables[0]
        language = start.language if self.multilingual else "en"
        if self.multilingual and language is None:
            first = self._prefill(window, table, [self.tokens.sot])[-1]
            language = detect_language(first, self.tokens)
        prompt = self.tokens.prompt(language, start.task, start.timestamps, start.previous)
        all_logits = self._prefill(window, table, prompt)
        blocks = -(-len(prompt) // self.block_size)
        own = [(a, b) for other in start.block_tables[1:] for a, b in zip(table[:blocks], other, strict=True)]
        copy_blocks(self.kv_caches, [(a, b) for a, b in own if a != b])  # blocks a candidate does not share
        sot_index = len(prompt) - 1 - prompt[::-1].index(self.tokens.sot)
        silence = no_speech_prob(all_logits[sot_index], self.tokens)
        seed = start.seed if start.seed is not None else start.seq_ids[0]
        states = []
        for i, seq_id in enumerate(start.seq_ids):
            generator = None
            if start.temperature > 0:
                generator = torch.Generator().manual_seed(seed + i * CANDIDATE_SEED_STEP)
            state = DecodeState(
                start.timestamps, start.temperature, generator=generator, no_speech_prob=silence
            )
            self.seqs[seq_id] = _Sequence(window, state, len(prompt))
            states.append(state)
        logits = all_logits[-1:].expand(len(states), -1).clone()
        return TranscriptionBegun(select_tokens(logits, states, self.tokens), language, len(prompt))

    def _prefill(self, window: int, table: list[int], ids: list[int]) -> torch.Tensor:
        """Prefill ``ids`` from position 0 into one block table; the logits after each [T, V]."""
        positions, meta = step_metadata([table], [0], len(ids), self.block_size, self.device)
        tokens = torch.tensor([ids], device=self.device)
        crosses = [(k[window : window + 1], v[window : window + 1]) for k, v in self.crosses]
        return self.model.decoder(tokens, positions, self.kv_caches, meta, crosses)[0]

    @torch.inference_mode()
    def advance(self, seq_ids: list[int], block_tables: list[list[int]]) -> list[int]:
        if not seq_ids:
            return []
        seqs = [self.seqs[s] for s in seq_ids]
        starts = [seq.length for seq in seqs]
        positions, meta = step_metadata(block_tables, starts, 1, self.block_size, self.device, self.kernel)
        last = torch.tensor([[seq.state.sampled[-1]] for seq in seqs], device=self.device)
        crosses = self._batch_crosses(tuple(seq.window for seq in seqs))
        logits = self.model.decoder(last, positions, self.kv_caches, meta, crosses)[:, -1]
        for seq in seqs:
            seq.length += 1
        return select_tokens(logits, [seq.state for seq in seqs], self.tokens)

    def _batch_crosses(self, windows: tuple[int, ...]):
        """Per layer, the audio keys/values of the batch's distinct windows [W, H, 1500, hd] and how
        rows group by window (candidates of one window share its audio, never copied per row); kept
        while the rows stay the same, since gathering the audio is the largest copy of a step."""
        if self._rows is None or self._rows[0] != windows:
            distinct = list(dict.fromkeys(windows))
            rows = [[b for b, w in enumerate(windows) if w == window] for window in distinct]
            m = max(len(r) for r in rows)
            pad = [r[min(j, len(r) - 1)] for r in rows for j in range(m)]
            slot = {b: i * m + j for i, r in enumerate(rows) for j, b in enumerate(r)}
            unpad = [slot[b] for b in range(len(windows))]
            index, group = (
                torch.tensor(distinct, device=self.device),
                (
                    torch.tensor(pad, device=self.device),
                    torch.tensor(unpad, device=self.device),
                    m,
                ),
            )
            crosses = [(k.index_select(0, index), v.index_select(0, index), group) for k, v in self.crosses]
            self._rows = windows, crosses
        return self._rows[1]

    def release(self, seq_ids: list[int]) -> None:
        windows = {seq.window for s in seq_ids if (seq := self.seqs.pop(s, None)) is not None}
        self._free.extend(windows - set(self._free))
        self._rows = None  # a freed audio slot may be filled with new audio

    def scores(self, seq_id: int) -> tuple[float, float]:
        state = self.seqs[seq_id].state
        return state.sum_logprob, state.no_speech_prob

    @torch.inference_mode()
    def align(self, seq_id: int, text_tokens: list[int], frames: int, language: str | None, task: str):
        window = self.seqs[seq_id].window
        prefix = self.tokens.prompt(language if self.multilingual else None, task, False, [])
        crosses = [(k[window : window + 1], v[window : window + 1]) for k, v in self.crosses]
        tokens = [*prefix, *text_tokens, self.eot]
        weights = alignment_weights(self.model.decoder, tokens, crosses, self.alignment_heads)
        return word_times(weights, self.tokenizer, text_tokens, len(prefix), frames // 2)
