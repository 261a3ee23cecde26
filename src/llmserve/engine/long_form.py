"""Whisper's long-form rules (openai/whisper ``transcribe``), pure Python.

A clip is decoded in 30 s windows that start where the previous one's speech ended: at the last
timestamp pair of a window, or after the whole window when it ends on a single timestamp or has
no pair. A window decoded too repetitively (compression ratio) or too unsurely (average
log-probability) is decoded again at the next temperature (sampling ``BEST_OF`` candidates and
keeping the likeliest per token); a window that is likely silence is skipped.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

FRAMES_PER_SECOND = 100  # log-mel frames
SAMPLES_PER_FRAME = 160
WINDOW_FRAMES = 3000  # 30 s
FRAMES_PER_TIMESTAMP = 2  # one timestamp token is 20 ms
SECONDS_PER_TIMESTAMP = 0.02
TEMPERATURE_STEP = 0.2
COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
MAX_PROMPT_TOKENS = 223  # Whisper keeps n_text_ctx // 2 - 1 tokens of earlier text
PROMPT_RESET_TEMPERATURE = 0.5  # windows sampled hotter than this are not carried as context
BEST_OF = 5  # candidates sampled per window above temperature 0 (Whisper's CLI default)


def temperature_schedule(temperature: float, fallback: bool = True) -> tuple[float, ...]:
    """The temperatures to try: from ``temperature`` up to 1.0 in steps of 0.2 (Whisper's CLI)."""
    if not fallback:
        return (temperature,)
    steps = int((1.0 - temperature) / TEMPERATURE_STEP + 1e-6)
    return tuple(round(temperature + i * TEMPERATURE_STEP, 6) for i in range(max(steps, 0) + 1))


def compression_ratio(text: str) -> float:
    """Whisper's repetition signal: text bytes over their zlib-compressed size."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass(frozen=True, slots=True)
class WindowResult:
    """What a decoded window scored."""

    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float

    def needs_fallback(self) -> bool:
        """Too repetitive or too unsure, unless it is silence (Whisper's ``decode_with_fallback``)."""
        bad = self.compression_ratio > COMPRESSION_RATIO_THRESHOLD or self.avg_logprob < LOGPROB_THRESHOLD
        silent = self.no_speech_prob > NO_SPEECH_THRESHOLD and self.avg_logprob < LOGPROB_THRESHOLD
        return bad and not silent

    def is_silence(self) -> bool:
        """Likely no speech and not confidently decoded: the window is skipped."""
        return self.no_speech_prob > NO_SPEECH_THRESHOLD and self.avg_logprob <= LOGPROB_THRESHOLD


@dataclass(frozen=True, slots=True)
class Piece:
    """A segment of one window: its times from the window's start, and its tokens."""

    start: float
    end: float
    tokens: list[int]


def split_window(tokens: list[int], timestamp_begin: int, window_frames: int) -> tuple[list[Piece], int]:
    """Cut a window's sampled tokens (without end-of-text) into pieces at consecutive timestamps,
    and say how many frames the next window starts after this one's start."""
    is_ts = [t >= timestamp_begin for t in tokens]
    single_ending = len(tokens) >= 2 and not is_ts[-2] and is_ts[-1]
    cuts = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    if not cuts:  # no pair: the whole window is one segment
        stamps = [t for t in tokens[1:] if t >= timestamp_begin]  # a closing one, if any
        end = window_frames / FRAMES_PER_SECOND
        if stamps and stamps[-1] != timestamp_begin:
            end = (stamps[-1] - timestamp_begin) * SECONDS_PER_TIMESTAMP
        start = (tokens[0] - timestamp_begin) * SECONDS_PER_TIMESTAMP if tokens and is_ts[0] else 0.0
        return [Piece(start, max(end, start), tokens)], window_frames
    if single_ending:
        cuts.append(len(tokens))
    pieces, last = [], 0
    for cut in cuts:
        piece = tokens[last:cut]
        stamps = [t - timestamp_begin for t in piece if t >= timestamp_begin]
        start = stamps[0] * SECONDS_PER_TIMESTAMP if is_ts[last] else (pieces[-1].end if pieces else 0.0)
        pieces.append(Piece(start, max(stamps[-1] * SECONDS_PER_TIMESTAMP, start), piece))
        last = cut
    if single_ending:
        return pieces, window_frames
    advance = (tokens[last - 1] - timestamp_begin) * FRAMES_PER_TIMESTAMP
    return pieces, advance if advance > 0 else window_frames
