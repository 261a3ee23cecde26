"""Wire shapes of OpenAI's audio API (transcriptions and translations)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]


class TranscriptionRequest(BaseModel):
    """The multipart form fields of /v1/audio/transcriptions (``file`` is the uploaded audio)."""

    model_config = ConfigDict(extra="ignore")

    file: bytes = Field(
        b"", description="The audio file: WAV, or FLAC/MP3/OGG/WEBM/M4A where ffmpeg is installed."
    )
    model: str | None = None
    language: str | None = Field(None, description="ISO-639-1 code; detected when left out.")
    prompt: str | None = Field(None, description="Text the transcript should continue (style, spellings).")
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    timestamp_granularities: list[Literal["segment", "word"]] = Field(default_factory=lambda: ["segment"])
    stream: bool = Field(
        False,
        description="Send transcript.text.delta events: each 30 s window's text, segment by segment, "
        "once its decoding is final (after any temperature fallback and best-of sampling).",
    )
    seed: int | None = None


class TranslationRequest(BaseModel):
    """The multipart form fields of /v1/audio/translations (to English)."""

    model_config = ConfigDict(extra="ignore")

    file: bytes = b""
    model: str | None = None
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    seed: int | None = None


class Usage(BaseModel):
    """Audio usage: seconds of input."""

    type: Literal["duration"] = "duration"
    seconds: float


class Transcription(BaseModel):
    """``response_format: json``."""

    text: str
    usage: Usage | None = None


class Segment(BaseModel):
    """One timed stretch of a verbose transcript."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float = Field(description="The temperature its window was decoded at (after any fallback).")
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class Word(BaseModel):
    """One word and its times (Whisper's cross-attention alignment)."""

    word: str
    start: float
    end: float


class TranscriptionVerbose(BaseModel):
    """``response_format: verbose_json``."""

    task: Literal["transcribe", "translate"]
    language: str
    duration: float
    text: str
    segments: list[Segment] | None = Field(None, description="With `segment` in timestamp_granularities.")
    words: list[Word] | None = Field(None, description="With `word` in timestamp_granularities.")
    usage: Usage | None = None


class TextDelta(BaseModel):
    """A streamed ``transcript.text.delta`` event."""

    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str


class TextDone(BaseModel):
    """The final streamed ``transcript.text.done`` event."""

    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str
    usage: Usage | None = None
