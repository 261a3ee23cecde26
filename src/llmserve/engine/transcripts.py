"""What a transcription request asks for and what it gets back: options, segments, the transcript
and the events a request's stream carries."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmserve.engine.long_form import BEST_OF


@dataclass(frozen=True, slots=True)
class TranscriptionOptions:
    """How to decode one request. ``language`` None: detect (multilingual models) or English.
    ``fallback``: decode a failing window again at higher temperatures (a stream then sends each
    window's text once its decoding is final). ``best_of``: candidates sampled per window at a
    temperature above 0."""

    language: str | None = None
    task: str = "transcribe"  # or "translate" (to English)
    prompt_ids: tuple[int, ...] = ()
    timestamps: bool = False
    temperature: float = 0.0
    seed: int | None = None
    fallback: bool = True
    words: bool = False  # word timestamps (the Transcriber must support them)
    best_of: int = BEST_OF


@dataclass(slots=True)
class Segment:
    """A stretch of the transcript with its times in seconds, and how its window decoded."""

    id: int
    start: float
    end: float
    text: str
    tokens: list[int]
    seek: int = 0  # the window's first log-mel frame (100 per second)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(slots=True)
class Transcript:
    """The finished transcription of one request."""

    text: str
    language: str
    duration: float
    segments: list[Segment]
    num_tokens: int
    words: list[dict] = field(default_factory=list)  # {"word", "start", "end"} when asked for


@dataclass(slots=True)
class TranscriptEvent:
    """A text delta (``done`` False) or the final transcript (``done`` True), or an error."""

    delta: str = ""
    done: bool = False
    transcript: Transcript | None = None
    error: BaseException | None = None
