"""Whisper's long-form rules on token sequences: where a window is cut and where the next one
starts, the temperature schedule, when a window falls back or is skipped; subtitles past a minute."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llmserve.engine.long_form import WindowResult, split_window, temperature_schedule
from llmserve.protocols.audio import formats

TS = 50_000  # first timestamp token in these sequences; TS + n is n * 20 ms


def test_the_next_window_starts_at_the_last_timestamp_pair():
    tokens = [TS, 1, 2, TS + 100, TS + 100, 3, TS + 250, TS + 260, 4, 5]  # last text unfinished
    pieces, advance = split_window(tokens, TS, 3000)
    assert [(p.start, p.end, p.tokens) for p in pieces] == [
        (0.0, 2.0, [TS, 1, 2, TS + 100]),
        (2.0, 5.0, [TS + 100, 3, TS + 250]),
    ]
    assert advance == 250 * 2  # frames: the unfinished text is decoded again in the next window


def test_a_single_closing_timestamp_consumes_the_window():
    tokens = [TS, 1, TS + 100, TS + 100, 2, TS + 300]
    pieces, advance = split_window(tokens, TS, 2400)
    assert [(p.start, p.end) for p in pieces] == [(0.0, 2.0), (2.0, 6.0)]
    assert advance == 2400


def test_no_pair_makes_one_segment_of_the_window():
    pieces, advance = split_window([TS + 10, 1, 2, 3], TS, 1500)
    assert [(p.start, p.end) for p in pieces] == [(0.2, 15.0)] and advance == 1500
    pieces, advance = split_window([1, 2], TS, 3000)  # without timestamps
    assert pieces[0].tokens == [1, 2] and advance == 3000


def test_a_pair_at_zero_still_moves_on():
    _, advance = split_window([TS, TS, 1, 2], TS, 3000)
    assert advance == 3000


def test_temperature_schedule():
    assert temperature_schedule(0.0) == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert temperature_schedule(0.5) == (0.5, 0.7, 0.9)
    assert temperature_schedule(1.0) == (1.0,)
    assert temperature_schedule(0.3, fallback=False) == (0.3,)


@pytest.mark.parametrize(
    ("avg_logprob", "ratio", "no_speech", "fallback", "silence"),
    [
        (-0.3, 1.5, 0.01, False, False),
        (-0.3, 3.1, 0.01, True, False),  # repetitive
        (-1.4, 1.5, 0.01, True, False),  # unsure
        (-1.4, 1.5, 0.9, False, True),  # silence: skipped, not retried
        (-0.3, 1.5, 0.9, False, False),  # confident speech despite the no-speech probability
    ],
)
def test_fallback_and_silence(avg_logprob, ratio, no_speech, fallback, silence):
    result = WindowResult(avg_logprob, ratio, no_speech)
    assert result.needs_fallback() is fallback and result.is_silence() is silence


def test_subtitles_past_a_minute():
    segments = [
        SimpleNamespace(start=59.5, end=61.25, text=" Hello."),
        SimpleNamespace(start=3725, end=3726.5, text="x"),
    ]
    assert formats.srt(segments).split("\n")[1] == "00:00:59,500 --> 00:01:01,250"
    assert "01:02:05.000 --> 01:02:06.500" in formats.vtt(segments)
