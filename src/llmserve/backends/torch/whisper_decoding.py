"""Whisper's token rules: its special tokens, the suppressed ids, and timestamp pairing.

The timestamp rules are Whisper's own (openai/whisper ``ApplyTimestampRules``): timestamps come
in pairs around text, never go backwards, the first token is a timestamp no later than 1 s, and
a timestamp is forced when timestamps together are likelier than any text token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

MAX_INITIAL_TIMESTAMP_INDEX = 50  # 1 s in 20 ms steps
SECONDS_PER_TIMESTAMP = 0.02


@dataclass(frozen=True)
class WhisperTokens:
    """Special token ids of one Whisper vocabulary, and the ids it never samples."""

    eot: int
    sot: int
    sot_prev: int
    no_timestamps: int
    no_speech: int | None  # <|nospeech|> (<|nocaptions|> in older vocabularies)
    timestamp_begin: int
    transcribe: int
    translate: int
    languages: dict[str, int]  # "en" -> <|en|>
    suppress: tuple[int, ...]
    suppress_begin: tuple[int, ...]
    multilingual: bool

    @classmethod
    def from_dir(cls, model_dir: str | Path, tokenizer, vocab_size: int) -> WhisperTokens:
        """From the tokenizer, the suppress lists (CTranslate2's config.json, or transformers'
        generation_config.json / config.json) and the model's vocabulary size (51865 and up:
        multilingual; timestamps follow ``<|notimestamps|>``)."""
        suppress, begin = _suppress_lists(Path(model_dir))
        ids = tokenizer.convert_tokens_to_ids
        vocab = tokenizer.get_vocab()
        languages = {
            tok[2:-2]: idx
            for tok, idx in vocab.items()
            if tok.startswith("<|") and tok.endswith("|>") and 2 <= len(tok) - 4 <= 3 and tok[2:-2].isalpha()
        }
        return cls(
            eot=ids("<|endoftext|>"),
            sot=ids("<|startoftranscript|>"),
            sot_prev=ids("<|startofprev|>"),
            no_timestamps=ids("<|notimestamps|>"),
            no_speech=vocab.get("<|nospeech|>", vocab.get("<|nocaptions|>")),
            timestamp_begin=ids("<|notimestamps|>") + 1,
            transcribe=ids("<|transcribe|>"),
            translate=ids("<|translate|>"),
            languages=languages,
            suppress=suppress,
            suppress_begin=begin,
            multilingual=vocab_size >= 51865,
        )

    def prompt(self, language: str | None, task: str, timestamps: bool, previous: list[int]) -> list[int]:
        """The decoder prompt: optional ``<|startofprev|>`` text, then the start sequence."""
        out = [self.sot_prev, *previous] if previous else []
        out.append(self.sot)
        if self.multilingual:
            out += [
                self.languages[language or "en"],
                self.translate if task == "translate" else self.transcribe,
            ]
        if not timestamps:
            out.append(self.no_timestamps)
        return out


def _suppress_lists(model_dir: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    config = json.loads((model_dir / "config.json").read_text())
    if "suppress_ids" in config:  # CTranslate2
        return tuple(config["suppress_ids"] or ()), tuple(config.get("suppress_ids_begin") or ())
    generation = model_dir / "generation_config.json"
    if generation.is_file():
        config = {**config, **json.loads(generation.read_text())}
    return tuple(config.get("suppress_tokens") or ()), tuple(config.get("begin_suppress_tokens") or ())


@dataclass
class DecodeState:
    """One sequence's sampling state: what it has sampled and how it samples."""

    timestamps: bool
    temperature: float = 0.0
    sampled: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    sum_logprob: float = 0.0  # of the sampled tokens, after the rules, before temperature
    no_speech_prob: float = 0.0


def _timestamp_rules(row: torch.Tensor, state: DecodeState, tokens: WhisperTokens) -> None:
    begin = tokens.timestamp_begin
    row[tokens.no_timestamps] = float("-inf")
    seq = state.sampled
    last_ts = len(seq) >= 1 and seq[-1] >= begin
    penultimate_ts = len(seq) < 2 or seq[-2] >= begin
    if last_ts:
        if penultimate_ts:  # a pair just closed: text must follow
            row[begin:] = float("-inf")
        else:  # an open timestamp: close it, or end
            row[: tokens.eot] = float("-inf")
    stamps = [t for t in seq if t >= begin]
    if stamps:
        floor = stamps[-1] if last_ts and not penultimate_ts else stamps[-1] + 1
        row[begin:floor] = float("-inf")
    if not seq:
        row[:begin] = float("-inf")
        row[begin + MAX_INITIAL_TIMESTAMP_INDEX + 1 :] = float("-inf")
    logprobs = torch.log_softmax(row.float(), dim=-1)
    if torch.logsumexp(logprobs[begin:], dim=-1) > logprobs[:begin].max():
        row[:begin] = float("-inf")


def select_tokens(logits: torch.Tensor, states: list[DecodeState], tokens: WhisperTokens) -> list[int]:
    """Apply Whisper's rules to ``logits`` [B, V] (in place) and pick one token per row."""
    logits = logits.float()
    suppress = torch.tensor(tokens.suppress, dtype=torch.long)
    if len(suppress):
        logits[:, suppress[suppress < logits.shape[1]]] = float("-inf")
    out = []
    for row, state in zip(logits, states, strict=True):
        if not state.sampled and tokens.suppress_begin:
            row[list(tokens.suppress_begin)] = float("-inf")
        if state.timestamps:
            _timestamp_rules(row, state, tokens)
        if state.temperature > 0:
            probs = torch.softmax(row / state.temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=state.generator))
        else:
            token = int(row.argmax())
        state.sum_logprob += float(torch.log_softmax(row, dim=-1)[token])
        state.sampled.append(token)
        out.append(token)
    return out


def no_speech_prob(logits: torch.Tensor, tokens: WhisperTokens) -> float:
    """The probability of ``<|nospeech|>`` in the logits after ``<|startoftranscript|>``."""
    if tokens.no_speech is None:
        return 0.0
    return float(torch.softmax(logits.float(), dim=-1)[tokens.no_speech])


def detect_language(logits: torch.Tensor, tokens: WhisperTokens) -> str:
    """The likeliest language from the logits after ``<|startoftranscript|>``."""
    codes = list(tokens.languages)
    ids = torch.tensor([tokens.languages[c] for c in codes])
    return codes[int(logits.float()[ids].argmax())]
