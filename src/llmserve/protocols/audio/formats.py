"""A transcript as each ``response_format``: JSON bodies, plain text, SubRip and WebVTT."""

from __future__ import annotations

from typing import Any


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def srt(segments: list[Any]) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``."""
    cues = [
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(cues)


def vtt(segments: list[Any]) -> str:
    """WebVTT: a header, then ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` cues."""
    cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def verbose(transcript: Any, task: str, granularities: list[str]) -> dict[str, Any]:
    """The ``verbose_json`` body: ``segments`` and/or ``words`` as ``granularities`` ask."""
    fields = ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob")
    fields += ("compression_ratio", "no_speech_prob")
    segments = [{name: getattr(s, name) for name in fields} for s in transcript.segments]
    body = {
        "task": task,
        "language": transcript.language,
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
    }
    if "segment" in granularities:
        body["segments"] = segments
    if "word" in granularities:
        body["words"] = transcript.words
    return {**body, "usage": usage(transcript)}


def usage(transcript: Any) -> dict[str, Any]:
    """OpenAI's duration usage."""
    return {"type": "duration", "seconds": round(transcript.duration, 3)}
